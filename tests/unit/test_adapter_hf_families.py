"""attention_adapter on the Hugging Face architectures people fine-tune: discovery from structure and
config (separate, fused blocked, fused interleaved, grouped-query and multi-query attention), kinds
(self / cross / decoder self), and the ``an2020`` gradient head by head against hand-cut slices.

The per-architecture checks are those of ``scripts/make_adapter_compat_table.py`` (which writes the
compatibility table of ``docs/attention_adapter.md``): tiny random configs, a few seconds in all.
"""

import importlib.util
import os
import sys

import pytest
import torch
from torch import nn

from attention_adapter import (
    HeadLayout,
    HeadParticles,
    HeadSelection,
    RepulsiveHeads,
    TensorBlock,
    describe_attention,
    find_attention,
    select_layers,
)
from attention_adapter.discovery import unresolved_attention

pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("torch_one_thread")

_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "make_adapter_compat_table.py")
_spec = importlib.util.spec_from_file_location("make_adapter_compat_table", _SCRIPT)
compat = importlib.util.module_from_spec(_spec)
sys.modules.setdefault(_spec.name, compat)  # dataclasses look their module up by name
_spec.loader.exec_module(compat)
ARCHS = {a.name.split(" ")[0]: a for a in compat.ARCHS}


@pytest.mark.parametrize("name", list(ARCHS))
def test_architecture_heads_and_an2020_gradient_match_hand_cut_slices(name):
    row = compat.check(ARCHS[name])
    assert "error" not in row, row.get("trace")
    assert row["an2020"].startswith("ok") and row["order"].startswith("ok")
    # the circuit and function spaces (outputs, and attention maps): discovery, forward, backward and one apply()
    assert row["spaces"].count(": ok") == 3 and "**fails**" not in row["spaces"], row["spaces"]


def test_at_least_fifteen_architectures_and_every_kind_and_layout():
    assert len(ARCHS) >= 15
    kinds, layouts, gqa = set(), set(), set()
    for name in ("t5", "llama", "bloom", "falcon", "falcon-mqa", "gpt2", "gemma"):
        model, _ = compat.build(ARCHS[name])
        for s in find_attention(model):
            kinds.add(s.attention)
            layouts.add(s.description)
            gqa.add(s.num_heads // s.num_kv_heads)
    assert kinds == {"self", "cross", "decoder_self"}
    for part in ("per-head interleaved [q_h, k_h, v_h]", "grouped [q x 2, k, v] per key/value head",
                 "blocked [Q; K; V]",
                 "separate q/k/v/o", "separate q_proj/k_proj/v_proj/o_proj", "Conv1D"):
        assert any(part in lay for lay in layouts), part
    assert gqa == {1, 2, 4}


def _model(name):
    return compat.build(ARCHS[name])[0]


def test_gqa_separate_systems_have_query_and_key_value_sizes():
    model = _model("llama")
    heads = HeadParticles(model)
    sizes = {g.name.rsplit(":", 1)[1]: g.num_particles for g in heads.groups if g.name.startswith("layers.0.")}
    assert sizes == {"q": 4, "k": 2, "v": 2}
    report = heads.report()
    assert "4 query / 2 key-value heads" in report and "group layers.0.self_attn:k: 2 x 256" in report


def test_gqa_joint_particle_is_a_key_value_head_with_its_query_group():
    """particles="joint" under GQA: particle g = q_{2g} || q_{2g+1} || k_g || v_g (r = 2), from hand slices."""
    model = _model("llama")
    heads = HeadParticles(model, particles="joint", include_output=True)
    att = model.layers[1].self_attn
    g = next(gr for gr in heads.groups if gr.name == "layers.1.self_attn:qkv+out")
    rows = g.gather("data")
    d, r = 8, 2
    assert rows.shape == (2, g.dim) and g.num_particles == 2
    for kv in range(2):
        q = att.q_proj.weight[kv * r * d:(kv + 1) * r * d].reshape(-1)
        k = att.k_proj.weight[kv * d:(kv + 1) * d].reshape(-1)
        v = att.v_proj.weight[kv * d:(kv + 1) * d].reshape(-1)
        # o_proj (out x in) reads head h from columns [h d, (h+1) d); a particle stores them column-major
        o = torch.cat([att.o_proj.weight[:, h * d:(h + 1) * d].t().reshape(-1) for h in range(kv * r, (kv + 1) * r)])
        assert torch.equal(rows[kv], torch.cat([q, k, v, o]).detach())
    # scatter writes back exactly (round trip on gradients)
    for p in heads.parameters():
        p.grad = torch.randn_like(p)
    before = {id(p): p.grad.clone() for p in heads.parameters()}
    for gr in heads.groups:
        gr.scatter_grad(gr.gather("grad").clone())
    assert all(torch.equal(p.grad, before[id(p)]) for p in heads.parameters())


def test_mqa_single_key_value_head_is_skipped_with_a_reason():
    model = _model("gemma")
    heads = HeadParticles(model)
    assert {n.rsplit(":", 1)[1] for n in heads.names} == {"q"}
    assert "single particle" in heads.skipped["layers.0.self_attn:k"]
    with pytest.raises(ValueError, match="at least one trainable group.*single particle"):
        HeadParticles(model, particles="joint")


@pytest.mark.parametrize("name", ["bloom", "falcon", "gpt_neox"])
@pytest.mark.parametrize("choice", [dict(particles="separate", include_bias=True, include_output=True),
                                    dict(particles="joint", include_bias=True, include_output=True)])
def test_interleaved_fused_round_trip_is_lossless_and_touches_only_head_blocks(name, choice):
    model = _model(name)
    heads = HeadParticles(model, **choice)
    params = heads.parameters()
    gen = torch.Generator().manual_seed(1)
    source = {id(p): torch.randn(p.shape, generator=gen) for p in params}
    target = {id(p): torch.full(p.shape, float("nan")) for p in params}
    for g in heads.groups:
        rows = torch.cat([b.gather(source[id(b.param)]).reshape(g.num_particles, -1) for b in g.blocks], 1)
        g.scatter(target, rows)
    for p in params:
        done = ~torch.isnan(target[id(p)])
        assert torch.equal(target[id(p)][done], source[id(p)][done])
    qkv = model.h[0].self_attention.query_key_value if name != "gpt_neox" else model.layers[0].attention.query_key_value
    assert not torch.isnan(target[id(qkv.weight)]).any()  # Q, K and V slots tile the fused tensor exactly


def test_kinds_are_labelled_and_selectable():
    model = _model("t5")
    sites = find_attention(model)
    by_kind = {k: [s.name for s in sites if s.attention == k] for k in ("self", "cross", "decoder_self")}
    assert by_kind["cross"] == ["decoder.block.0.layer.1.EncDecAttention", "decoder.block.1.layer.1.EncDecAttention"]
    assert by_kind["decoder_self"] == ["decoder.block.0.layer.0.SelfAttention", "decoder.block.1.layer.0.SelfAttention"]
    assert by_kind["self"] == ["encoder.block.0.layer.0.SelfAttention", "encoder.block.1.layer.0.SelfAttention"]
    heads = RepulsiveHeads(model, preset="an2020", selection=HeadSelection(kinds=("cross",), layers=[-1]))
    assert heads.head_particles.names == [f"decoder.block.1.layer.1.EncDecAttention:{r}" for r in "qkv"]
    assert "EncDecAttention: T5Attention, cross" in heads.report()
    assert [s.name for s in select_layers(sites, kinds="decoder_self")] == by_kind["decoder_self"]
    with pytest.raises(ValueError, match="expected kinds as None or a non-empty subset"):
        select_layers(sites, kinds=("encoder",))
    with pytest.raises(ValueError, match="keeps none"):
        select_layers(find_attention(_model("bert")), kinds="cross")
    text = describe_attention(model)
    assert "2 self, 2 cross, 2 decoder_self" in text


def test_torch_transformer_kinds():
    model = nn.Transformer(16, 4, 1, 1, 32, batch_first=True)
    kinds = [(s.name, s.attention) for s in find_attention(model)]
    assert kinds == [("encoder.layers.0.self_attn", "self"), ("decoder.layers.0.self_attn", "decoder_self"),
                     ("decoder.layers.0.multihead_attn", "cross")]
    assert [s.attention for s in find_attention(nn.TransformerDecoderLayer(16, 4, 32))] == ["decoder_self", "cross"]


class _NoHeads(nn.Module):
    """Looks like attention (q_proj/k_proj/v_proj) but says nothing about its heads."""

    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)


class _ConvProj(nn.Module):
    def __init__(self):
        super().__init__()
        self.num_heads = 2
        self.query, self.key, self.value = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)


class _BadWidth(_NoHeads):
    def __init__(self):
        super().__init__()
        self.num_heads = 3


def test_unresolved_attention_is_an_error_naming_module_and_reason():
    model = nn.ModuleDict({"a": _NoHeads(), "b": _ConvProj(), "c": _BadWidth(), "ok": nn.MultiheadAttention(8, 2)})
    with pytest.raises(ValueError, match=r"3 could not be resolved: 'a': _NoHeads: no number of heads.*"
                                         r"'b': _ConvProj: expected nn.Linear projections, received "
                                         r"query \(Conv2d\).*'c': _BadWidth: 3 heads .* do not divide the 8 "
                                         r"outputs of q_proj"):
        HeadParticles(model)
    assert set(unresolved_attention(model)) == {"a", "b", "c"}
    sites = find_attention(model, strict=False)
    assert [s.name for s in sites] == ["ok"]
    text = describe_attention(model)
    assert "[0] ok: MultiheadAttention, self, 2 heads" in text
    assert "not resolved: a: _NoHeads: no number of heads" in text
    # a user layout resolves it
    sites = find_attention(model["a"], {_NoHeads: HeadLayout(num_heads=2, q="q_proj.weight", k="k_proj.weight",
                                                              v="v_proj.weight")})
    assert sites[0].num_heads == 2


def test_config_head_counts_are_checked_against_widths():
    att = _model("llama").layers[0].self_attn
    att.config.num_key_value_heads = 4  # inconsistent with k_proj (2 x 8 rows); num_key_value_groups still 2
    att.num_key_value_groups = 1
    with pytest.raises(ValueError, match="expected k_proj with G x 8 outputs.*received 16 outputs"):
        find_attention(att)


def test_user_gqa_and_interleaved_layouts():
    class Fused(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Linear(8, 4 * 3 * 2)  # 4 units of [q, q, k] ... here: H = 4 q heads, G = 2, d = 2

    m = Fused()
    lay = HeadLayout(num_heads=4, num_kv_heads=2, q=TensorBlock("w.weight", 0, 0, None, 2, 6, 0),
                     k=TensorBlock("w.weight", 0, 0, None, 2, 6, 2), v=TensorBlock("w.weight", 0, 0, None, 2, 6, 3))
    site = find_attention(m, {Fused: lay})[0]
    assert (site.num_heads, site.num_kv_heads) == (4, 2) and site.blocks["q"].head_size == 2
    with pytest.raises(ValueError, match="key/value heads dividing the 4 query heads, received 3"):
        find_attention(m, {Fused: HeadLayout(num_heads=4, num_kv_heads=3, q="w.weight")})
    with pytest.raises(ValueError, match="period/slot only with units"):
        TensorBlock("w.weight", 0, 0, None, None, 3, 1)
    with pytest.raises(ValueError, match="same head size.*num_kv_heads"):
        find_attention(m, {Fused: HeadLayout(num_heads=4, q=TensorBlock("w.weight", 0, 0, 16),
                                             k=TensorBlock("w.weight", 0, 16, 8))})


def test_doc_table_lists_every_architecture_without_failures():
    with open(compat.DOC, encoding="utf-8") as f:
        doc = f.read()
    block = doc[doc.index(compat.BEGIN):doc.index(compat.END)]
    assert "transformers " in block
    for arch in compat.ARCHS:
        assert f"| {arch.name} |" in block, f"{arch.name}: rerun scripts/make_adapter_compat_table.py --write"
    assert "**fails**" not in block
