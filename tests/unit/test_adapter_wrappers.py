"""Wrapped models: ``torch.compile``, ``DataParallel`` and PEFT (LoRA) around a Hugging Face BERT.

* ``unwrap_model`` sees through every wrapper, in any nesting, so group names are those of the
  plain model and the parameters are the same objects;
* frozen base weights are skipped with exactly one ``UserWarning`` naming how many tensors;
* LoRA-wrapped q/k/v projections are not discovered by the built-in layouts (they are not
  ``nn.Linear``); an explicit ``HeadLayout`` makes the LoRA ``B`` matrices the particles: their rows
  are head rows (``delta W = B A``, ``B`` is ``out x r``), tested here, and with PEFT's default
  ``B = 0`` initialisation all particles coincide and every head receives the same gradient.

``torch.compile`` runs with ``backend="eager"``: the inductor backend works on this machine but
compiling the tiny BERT's forward and backward takes about 40 s; what is tested is the wrapper
(``OptimizedModule._orig_mod``), which is the same for every backend.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from attention_adapter import An2020, HeadLayout, HeadParticles, HeadSelection, RepulsiveHeads, unwrap_model

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("torch_one_thread")

M, HIDDEN, LAYERS = 4, 32, 2
D = HIDDEN // M
ALPHA, EPSILON = 0.5, 0.1
# peft 0.21.2's get_peft_model calls PreTrainedModel.is_gradient_checkpointing, which transformers
# 5.23 deprecates with this FutureWarning (not ours, harmless): ignored by message, nothing else
PEFT_FUTURE_WARNING = "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"


def _bert(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=M,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=2,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                  attn_implementation="eager")
    return transformers.BertForSequenceClassification(cfg)


def _batch(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1, 50, (4, 8), generator=gen), "labels": torch.tensor([0, 1, 0, 1])}


def _an2020_svgd(x, g, alpha, epsilon):
    """The fairseq SVGD gradient ``epsilon (1/M) [K G - alpha R_sigma]`` (float64), written out."""
    x, g = x.double(), g.double()
    m = x.shape[0]
    diff = x[:, None, :] - x[None, :, :]
    d2 = (diff ** 2).sum(-1)
    sigma2 = torch.median(d2.flatten()) / (2 * math.log(m + 1))
    k = torch.exp(-d2 / (2 * sigma2))
    return epsilon / m * (k @ g - alpha * (k[:, :, None] * diff).sum(1) / sigma2)


# ------------------------------------------------------------------------------------------------
def test_unwrap_model_sees_through_nested_wrappers():
    model = _bert()
    compiled = torch.compile(model, backend="eager")
    assert unwrap_model(compiled) is model
    assert unwrap_model(nn.DataParallel(compiled)) is model
    assert unwrap_model(model) is model
    with pytest.raises(TypeError, match="expected a torch.nn.Module, received str"):
        unwrap_model("model")


def test_torch_compile_gives_the_plain_models_groups_and_gradients():
    plain, inner = _bert(), _bert()
    compiled = torch.compile(inner, backend="eager")
    a = RepulsiveHeads(plain, preset=An2020(alpha=ALPHA, epsilon=EPSILON))
    b = RepulsiveHeads(compiled, preset=An2020(alpha=ALPHA, epsilon=EPSILON))
    assert a.head_particles.names == b.head_particles.names and len(a.head_particles) == 3 * LAYERS
    assert {id(p) for p in b.head_particles.parameters()} <= {id(p) for p in inner.parameters()}
    plain(**_batch()).loss.backward()
    compiled(**_batch()).loss.backward()
    a.apply()
    b.apply()
    for (n, p), (_, q) in zip(plain.named_parameters(), inner.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=0, msg=n)  # same arithmetic: bit for bit
    state = b.state_dict()
    a.load_state_dict(state)  # same names: state dicts are exchangeable


# ------------------------------------------------------------------------------------------------
def test_frozen_tensors_give_one_warning_with_their_count():
    model = _bert()
    for layer in model.bert.encoder.layer:
        sa = layer.attention.self
        for lin in (sa.query, sa.key, sa.value):
            lin.weight.requires_grad_(False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="expected at least one trainable group of attention heads"):
            HeadParticles(model)
    assert len(caught) == 1, [str(w.message) for w in caught]
    msg = str(caught[0].message)
    assert caught[0].category is UserWarning
    assert "skipped 6 particle group(s)" in msg and "6 frozen tensor(s) with requires_grad=False" in msg
    assert "3 more" in msg  # six names, three shown

    model.bert.encoder.layer[1].attention.self.query.weight.requires_grad_(True)
    with pytest.warns(UserWarning, match=r"skipped 5 particle group\(s\).*using 5 frozen tensor") as rec:
        heads = HeadParticles(model)
    assert len(rec) == 1
    assert heads.names == ["bert.encoder.layer.1.attention:q"]
    # skip_frozen=False keeps them all (diversity metrics of a frozen model), without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(HeadParticles(model, skip_frozen=False)) == 3 * LAYERS


# ------------------------------------------------------------------------------------------------
peft = None


def _peft():
    global peft
    if peft is None:
        import peft as _peft  # pinned in requirements/test.txt: missing must fail, not skip

        peft = _peft
    return peft


def _lora(targets, **kw):
    p = _peft()
    return p.get_peft_model(_bert(), p.LoraConfig(r=4, lora_alpha=8, target_modules=targets, **kw))


def _lora_layout():
    # the LoRA B matrices (out x r) of query/key/value: head h = rows [h d, (h+1) d)
    return HeadLayout(num_heads="num_attention_heads", q="query.lora_B.default.weight",
                      k="key.lora_B.default.weight", v="value.lora_B.default.weight")


@pytest.mark.filterwarnings(PEFT_FUTURE_WARNING)
def test_peft_frozen_base_is_skipped_with_one_warning():
    model = _lora(["intermediate.dense"])  # LoRA elsewhere: the attention stays nn.Linear, frozen
    assert unwrap_model(model) is model.get_base_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="expected at least one trainable group"):
            RepulsiveHeads(model)
    mine = [w for w in caught if issubclass(w.category, UserWarning) and "attention_adapter" in str(w.message)]
    assert len(mine) == 1 and "6 frozen tensor(s)" in str(mine[0].message), [str(w.message) for w in caught]


@pytest.mark.filterwarnings(PEFT_FUTURE_WARNING)
def test_lora_projections_are_not_discovered_by_the_builtin_layouts():
    model = _lora(["query", "key", "value"])
    # lora.Linear is not nn.Linear: discovery refuses the module and asks for an explicit layout
    with pytest.raises(ValueError, match=r"layouts=\{MyAttention: HeadLayout"):
        RepulsiveHeads(model)


@pytest.mark.filterwarnings(PEFT_FUTURE_WARNING)
def test_lora_b_rows_are_head_aligned_particles():
    model = _lora(["query", "key", "value"], init_lora_weights=False)  # random B: distinct particles
    base = model.get_base_model()
    sa_cls = type(base.bert.encoder.layer[0].attention.self)
    heads = RepulsiveHeads(model, preset=An2020(alpha=ALPHA, epsilon=EPSILON),
                           selection=HeadSelection(layouts={sa_cls: _lora_layout()}))
    assert heads.head_particles.names == [f"bert.encoder.layer.{i}.attention.self:{r}" for i in range(LAYERS) for r in "qkv"]
    query = base.bert.encoder.layer[0].attention.self.query  # peft lora.Linear
    b = query.lora_B["default"].weight
    assert tuple(b.shape) == (HIDDEN, 4)

    # head alignment in the real forward: perturbing head 2's particle (B rows [2d, 3d)) changes the
    # query projection of head 2 only
    x = torch.randn(3, 5, HIDDEN, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = query(x).reshape(3, 5, M, D)
        grp = heads.groups[0]
        new = grp.gather("data").clone()
        new[2] += 1.0
        grp.scatter({id(b): b.data}, new)
        after = query(x).reshape(3, 5, M, D)
    changed = (after - before).abs().amax(dim=(0, 1, 3))
    assert changed[2] > 1e-3 and torch.all(changed[[0, 1, 3]] == 0)

    # one step: B's gradients are the An2020 formula head by head; frozen base weights have none
    model.zero_grad()
    model(**_batch()).loss.backward()
    lora_bs = {(i, r): getattr(base.bert.encoder.layer[i].attention.self, n).lora_B["default"].weight
               for i in range(LAYERS) for r, n in (("q", "query"), ("k", "key"), ("v", "value"))}
    raw = {k: (p.detach().clone(), p.grad.clone()) for k, p in lora_bs.items()}
    a_grad = query.lora_A["default"].weight.grad.clone()
    heads.apply()
    for k, p in lora_bs.items():
        x_, g_ = raw[k]
        expected = _an2020_svgd(x_.reshape(M, -1), g_.reshape(M, -1), ALPHA, EPSILON)
        torch.testing.assert_close(p.grad.reshape(M, -1).double(), expected, rtol=1e-4,
                                   atol=1e-5 * float(expected.abs().max()), msg=str(k))
    assert query.base_layer.weight.grad is None
    torch.testing.assert_close(query.lora_A["default"].weight.grad, a_grad, rtol=0, atol=0)


@pytest.mark.filterwarnings(PEFT_FUTURE_WARNING)
def test_lora_b_zero_init_makes_every_head_receive_the_same_gradient():
    """PEFT's default B = 0: the particles coincide, K = 1 and R = 0, so SVGD gives every head the mean
    gradient, and the heads' LoRA updates stay identical. Why B is not a particle by default."""
    model = _lora(["query", "key", "value"])
    base = model.get_base_model()
    heads = RepulsiveHeads(model, preset=An2020(alpha=ALPHA, epsilon=EPSILON),
                           selection=HeadSelection(layouts={type(base.bert.encoder.layer[0].attention.self):
                                                        _lora_layout()}))
    model(**_batch()).loss.backward()
    b = base.bert.encoder.layer[0].attention.self.query.lora_B["default"].weight
    raw = b.grad.reshape(M, -1).clone()
    assert not torch.allclose(raw[0], raw[1])
    heads.apply()
    g = b.grad.reshape(M, -1)
    torch.testing.assert_close(g, (EPSILON * raw.mean(0)).expand_as(g), rtol=1e-5, atol=0)
