"""Head layouts: lossless gather/scatter, head alignment, discovery and its errors."""

import pytest
import torch
from torch import nn

from attention_adapter import (
    HeadCapture,
    HeadLayout,
    HeadParticles,
    TensorBlock,
    describe_attention,
    find_attention,
    select_layers,
)

transformers = pytest.importorskip("transformers")
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model  # noqa: E402
from transformers.models.bert.modeling_bert import BertSelfAttention  # noqa: E402
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention  # noqa: E402

E, H = 16, 4
D = E // H


pytestmark = pytest.mark.usefixtures("torch_one_thread")



class TinyAttention(nn.Module):
    """A user module in the style of LLaMA: separate wq/wk/wv/wo Linear layers."""

    def __init__(self, dim=E, n_heads=H):
        super().__init__()
        self.n_heads = n_heads
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        b, t, _ = x.shape
        d = x.shape[-1] // self.n_heads
        q, k, v = (w(x).view(b, t, self.n_heads, d).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        a = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, -1)
        return self.wo((a @ v).transpose(1, 2).reshape(b, t, -1)), a


TINY_LAYOUT = HeadLayout(num_heads="n_heads", q="wq.weight", k="wk.weight", v="wv.weight", out=("wo.weight", 1))


def _bert_cfg(**kw):
    return BertConfig(vocab_size=30, hidden_size=E, num_hidden_layers=2, num_attention_heads=H, intermediate_size=32,
                      attn_implementation="eager", **kw)


def _gpt2_cfg(**kw):
    return GPT2Config(vocab_size=30, n_embd=E, n_layer=2, n_head=H, n_positions=32, bos_token_id=0, eos_token_id=0,
                      attn_implementation="eager", **kw)


_FACTORIES = {
    "mha_packed": lambda: nn.MultiheadAttention(E, H),
    "mha_packed_bf": lambda: nn.MultiheadAttention(E, H, batch_first=True),
    "mha_kvdim": lambda: nn.MultiheadAttention(E, H, kdim=6, vdim=10, batch_first=True),
    "encoder": lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H, 32, batch_first=True), 2,
                                             enable_nested_tensor=False),
    "decoder_layer": lambda: nn.TransformerDecoderLayer(E, H, 32, batch_first=True),
    "transformer": lambda: nn.Transformer(E, H, 1, 1, 32, batch_first=True),
    "bert": lambda: BertModel(_bert_cfg()),
    "bert_self": lambda: BertSelfAttention(_bert_cfg()),
    "gpt2": lambda: GPT2Model(_gpt2_cfg()),
    "gpt2_cross": lambda: GPT2Attention(_gpt2_cfg(add_cross_attention=True), is_cross_attention=True, layer_idx=0),
    "custom": lambda: nn.Sequential(TinyAttention(), TinyAttention()),
}


def _build(name):
    torch.manual_seed(0)
    return _FACTORIES[name]()


MODEL_NAMES = list(_FACTORIES)
CHOICES = [
    dict(particles="separate"),
    dict(particles="separate", include_bias=True, include_output=True),
    dict(particles="joint"),
    dict(particles="joint", include_output=True, include_bias=True),
]


def _heads(model, **kw):
    layouts = {TinyAttention: TINY_LAYOUT}
    if kw.get("include_output") and isinstance(model, BertSelfAttention):
        kw["include_output"] = False  # a bare BertSelfAttention has no output projection
    return HeadParticles(model, layouts=layouts, **kw)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("choice", range(len(CHOICES)))
def test_gather_scatter_round_trip_is_lossless(name, choice):
    model = _build(name)
    heads = _heads(model, **CHOICES[choice])
    gen = torch.Generator().manual_seed(1)
    params = heads.parameters()
    source = {id(p): torch.randn(p.shape, generator=gen) for p in params}
    target = {id(p): torch.full(p.shape, float("nan")) for p in params}
    claimed = {id(p): torch.zeros(p.shape, dtype=torch.bool) for p in params}
    for g in heads.groups:
        rows = torch.cat([b.gather(source[id(b.param)]) for b in g.blocks], 1)
        assert rows.shape == (g.num_particles, g.dim)
        g.scatter(target, rows)
        g.scatter(claimed, torch.ones(g.num_particles, g.dim, dtype=torch.bool))
        # gather after scatter returns the same rows, bit for bit
        back = torch.cat([b.gather(target[id(b.param)]) for b in g.blocks], 1)
        assert torch.equal(back, rows)
    for p in params:
        m = claimed[id(p)]
        assert torch.equal(target[id(p)][m], source[id(p)][m])
        assert torch.isnan(target[id(p)][~m]).all()  # nothing written outside the head blocks


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_round_trip_on_real_gradients(name):
    model = _build(name)
    heads = _heads(model, particles="joint", include_bias=True)
    for p in heads.parameters():
        p.grad = torch.randn_like(p)
    before = {id(p): p.grad.clone() for p in heads.parameters()}
    for g in heads.groups:
        g.scatter_grad(g.gather("grad").clone())
    for p in heads.parameters():
        assert torch.equal(p.grad, before[id(p)])


def _independent_head_slices(name, model):
    """Where head h of the Q, K and V weights lives, written from the models' documented layouts.

    Returns a list of (parameter, role, index function h -> tensor index).
    """
    e, d = E, D
    if name.startswith("mha_packed"):
        w = model.in_proj_weight
        return [(w, r, (lambda h, o=o: (slice(o + h * d, o + (h + 1) * d), slice(None))))
                for r, o in (("q", 0), ("k", e), ("v", 2 * e))]
    if name == "mha_kvdim":
        return [(getattr(model, f"{r}_proj_weight"), r, lambda h: (slice(h * d, (h + 1) * d), slice(None)))
                for r in "qkv"]
    if name == "bert":
        att = model.encoder.layer[1].attention.self
        return [(getattr(att, m).weight, r, lambda h: (slice(h * d, (h + 1) * d), slice(None)))
                for r, m in (("q", "query"), ("k", "key"), ("v", "value"))]
    if name == "gpt2":
        w = model.h[1].attn.c_attn.weight  # (in, 3E): Conv1D columns
        return [(w, r, (lambda h, o=o: (slice(None), slice(o + h * d, o + (h + 1) * d))))
                for r, o in (("q", 0), ("k", e), ("v", 2 * e))]
    if name == "gpt2_cross":
        return [(model.q_attn.weight, "q", lambda h: (slice(None), slice(h * d, (h + 1) * d))),
                (model.c_attn.weight, "k", lambda h: (slice(None), slice(h * d, (h + 1) * d))),
                (model.c_attn.weight, "v", lambda h: (slice(None), slice(e + h * d, e + (h + 1) * d)))]
    if name == "custom":
        return [(getattr(model[1], f"w{r}").weight, r, lambda h: (slice(h * d, (h + 1) * d), slice(None)))
                for r in "qkv"]
    raise KeyError(name)


@pytest.mark.parametrize("name", ["mha_packed", "mha_packed_bf", "mha_kvdim", "bert", "gpt2", "gpt2_cross", "custom"])
@pytest.mark.parametrize("particles", ["separate", "joint"])
def test_perturbing_one_head_changes_exactly_one_particle(name, particles):
    model = _build(name)
    heads = _heads(model, particles=particles)
    for param, role, index in _independent_head_slices(name, model):
        for h in range(H):
            before = {g.name: g.gather("data").clone() for g in heads.groups}
            with torch.no_grad():
                param[index(h)] += 1.0
            changed = []
            for g in heads.groups:
                diff = (g.gather("data") - before[g.name]).abs().sum(1)
                changed += [(g.name, i) for i in torch.nonzero(diff).flatten().tolist()]
            with torch.no_grad():
                param[index(h)] -= 1.0
            assert len(changed) == 1, (role, h, changed)
            gname, row = changed[0]
            assert row == h
            assert gname.endswith(":" + role) or (particles == "joint" and gname.endswith(":qkv"))


def test_particle_rows_match_the_model_heads_functionally():
    """Scaling particle h of the key weights changes only head h's attention map in the forward pass."""
    torch.manual_seed(0)
    model = BertModel(_bert_cfg()).eval()
    heads = HeadParticles(model)
    x = torch.randint(0, 30, (2, 6))
    base = HeadCapture(heads.sites).run(lambda: model(x))
    group = next(g for g in heads.groups if g.name.endswith("layer.0.attention:k"))
    for h in range(H):
        rows = group.gather("data").clone()
        rows[h] *= 3.0
        saved = group.gather("data").clone()
        with torch.no_grad():
            group.scatter({id(p): p.data for p in group.params}, rows)
            cap = HeadCapture(heads.sites).run(lambda: model(x))
            group.scatter({id(p): p.data for p in group.params}, saved)
        delta = (cap.maps["encoder.layer.0.attention"] - base.maps["encoder.layer.0.attention"]).abs()
        per_head = delta.sum(dim=(0, 2, 3))
        assert per_head[h] > 1e-4
        assert torch.count_nonzero(per_head) == 1


def test_mha_gpt2_functional_alignment_of_value_heads():
    """Zeroing particle h of V zeroes exactly head h's output (MHA, either batch_first, and GPT-2)."""
    torch.manual_seed(0)
    cases = [
        (nn.MultiheadAttention(E, H, batch_first=True), lambda m: m(xb, xb, xb), "", (2, 5, E)),
        (nn.MultiheadAttention(E, H), lambda m: m(xb, xb, xb), "", (5, 2, E)),
        (GPT2Model(_gpt2_cfg()).eval(), lambda m: m(ids), "h.0.attn", None),
    ]
    ids = torch.randint(0, 30, (2, 5))
    for model, run, site, shape in cases:
        xb = torch.randn(shape) if shape else None
        heads = HeadParticles(model)
        g = next(gr for gr in heads.groups if gr.name == f"{site}:v")
        for h in range(H):
            saved = g.gather("data").clone()
            rows = saved.clone()
            rows[h] = 0.0
            with torch.no_grad():
                g.scatter({id(p): p.data for p in g.params}, rows)
                if site == "":
                    model.in_proj_bias.zero_()
                else:
                    model.h[0].attn.c_attn.bias.zero_()
            cap = HeadCapture(heads.sites).run(lambda: run(model))
            with torch.no_grad():
                g.scatter({id(p): p.data for p in g.params}, saved)
            out = cap.outputs[site]  # (B, T, M, d)
            norms = out.abs().sum(dim=(0, 1, 3))
            assert norms[h] == 0
            assert torch.count_nonzero(norms) == H - 1


def test_discovery_finds_every_attention_module_of_transformer():
    model = _build("transformer")
    names = [s.name for s in find_attention(model)]
    assert names == ["encoder.layers.0.self_attn", "decoder.layers.0.self_attn", "decoder.layers.0.multihead_attn"]
    bert_names = [s.name for s in find_attention(_build("bert"))]
    assert bert_names == ["encoder.layer.0.attention", "encoder.layer.1.attention"]


def test_wrappers_are_looked_through():
    model = _build("bert")
    plain = [s.name for s in find_attention(model)]
    assert [s.name for s in find_attention(nn.DataParallel(model))] == plain
    assert HeadParticles(nn.DataParallel(model)).names == HeadParticles(model).names


def test_report_is_readable():
    text = describe_attention(_build("gpt2"))
    assert "2 attention module(s)" in text and "h.1.attn" in text and "c_attn.weight" in text
    assert "axis=1" in text  # Conv1D heads are columns
    assert "no attention module found" in describe_attention(nn.Linear(3, 3))
    report = HeadParticles(_build("bert"), particles="joint").report()
    assert "4 x" in report and "q || k || v" in report


def test_no_attention_is_a_clear_error():
    with pytest.raises(ValueError, match="no attention|found none"):
        HeadParticles(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))


def test_heads_not_dividing_dimension_is_a_clear_error():
    class Odd(TinyAttention):
        pass

    m = Odd(dim=10, n_heads=2)
    with pytest.raises(ValueError, match="3 heads do not divide"):
        find_attention(m, {Odd: HeadLayout(num_heads=3, q="wq.weight", k="wk.weight", v="wv.weight")})


def test_layout_errors_name_what_was_expected():
    m = TinyAttention()
    with pytest.raises(ValueError, match="expected a parameter 'nope.weight'"):
        find_attention(m, {TinyAttention: HeadLayout(num_heads=4, q="nope.weight")})
    with pytest.raises(ValueError, match="runs past"):
        find_attention(m, {TinyAttention: HeadLayout(num_heads=4, q=TensorBlock("wq.weight", 0, 8, 16))})
    with pytest.raises(ValueError, match="no axis 2"):
        find_attention(m, {TinyAttention: HeadLayout(num_heads=4, q=("wq.weight", 2))})
    with pytest.raises(ValueError, match="attribute 'heads'"):
        find_attention(m, {TinyAttention: HeadLayout(num_heads="heads", q="wq.weight")})
    with pytest.raises(TypeError, match="HeadLayout or a factory"):
        find_attention(m, {TinyAttention: 3})
    with pytest.raises(TypeError, match="mapping"):
        find_attention(m, [TinyAttention])
    with pytest.raises(ValueError, match="at least one of q, k, v"):
        HeadLayout(num_heads=2)
    with pytest.raises(TypeError, match="model as a torch.nn.Module"):
        find_attention("model")


def test_user_layout_as_factory_and_predicate():
    model = nn.Sequential(TinyAttention(), TinyAttention())
    sites = find_attention(model, {lambda m: hasattr(m, "wq"): lambda m: TINY_LAYOUT})
    assert [s.name for s in sites] == ["0", "1"]
    assert sites[0].num_heads == H and sites[0].blocks["out"].axis == 1


def test_layer_selection():
    model = _build("bert")
    sites = find_attention(model)
    assert [s.name for s in select_layers(sites, [-1])] == ["encoder.layer.1.attention"]
    assert [s.name for s in select_layers(sites, "encoder.layer.0*")] == ["encoder.layer.0.attention"]
    assert len(select_layers(sites, lambda n, m: True)) == 2
    with pytest.raises(ValueError, match="out of range"):
        select_layers(sites, [5])
    with pytest.raises(ValueError, match="matches no attention module"):
        select_layers(sites, "decoder.*")
    with pytest.raises(TypeError, match="layer selectors"):
        select_layers(sites, [1.5])
    heads = HeadParticles(model, layers=[0], roles=("q", "k"))
    assert heads.names == ["encoder.layer.0.attention:q", "encoder.layer.0.attention:k"]


def test_frozen_heads_are_skipped_with_a_warning():
    model = _build("bert")
    model.encoder.layer[0].attention.self.key.weight.requires_grad_(False)
    with pytest.warns(UserWarning, match="encoder.layer.0.attention:k.*requires_grad=False"):
        heads = HeadParticles(model)
    assert "encoder.layer.0.attention:k" not in heads.names
    assert len(heads) == 5
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="at least one trainable group"):
        with pytest.warns(UserWarning):
            HeadParticles(model)


def test_overlapping_layouts_are_rejected_and_tied_modules_counted_once():
    shared = TinyAttention()
    model = nn.Sequential(shared, shared)  # one module used twice: discovered once
    assert len(find_attention(model, {TinyAttention: TINY_LAYOUT})) == 1

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = TinyAttention()
            self.b = TinyAttention()
            self.b.wq = self.a.wq  # two modules sharing one projection

    heads = HeadParticles(Tied(), layouts={TinyAttention: TINY_LAYOUT})
    assert "b:q" in heads.skipped and "b:q" not in heads.names
    bad = HeadLayout(num_heads=4, q=TensorBlock("wq.weight", 0, 0, 16), k=TensorBlock("wq.weight", 1, 0, 16))
    with pytest.raises(ValueError, match="overlapping"):
        HeadParticles(TinyAttention(), layouts={TinyAttention: bad})


def test_invalid_particle_choices():
    model = _build("mha_packed")
    with pytest.raises(ValueError, match="particles in"):
        HeadParticles(model, particles="pairs")
    with pytest.raises(ValueError, match="subset of"):
        HeadParticles(model, roles=("q", "o"))
    with pytest.raises(TypeError, match="include_bias as a bool"):
        HeadParticles(model, include_bias=1)
    with pytest.raises(ValueError, match="declares no output projection"):
        HeadParticles(_build("bert_self"), include_output=True)


def test_interleaved_blocks_overlap_only_where_their_slots_meet():
    """Q/K/V slots interleaved in one tensor share a range but not positions; equal slots do clash."""

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.n_heads = H
            self.qkv = nn.Linear(E, 3 * E)

    per_head = HeadLayout(num_heads="n_heads", **{r: TensorBlock("qkv.weight", 0, 0, None, H, 3, s)
                                                  for s, r in enumerate("qkv")})
    heads = HeadParticles(Packed(), layouts={Packed: per_head})
    assert [g.num_particles for g in heads.groups] == [H, H, H]
    text = heads.report()
    assert "interleaved(4 units x 3 slots, slot 1)" in text
    # head h of K is rows [(3h + 1) d, (3h + 2) d) of the fused weight
    w = heads.sites[0].module.qkv.weight
    k = next(g for g in heads.groups if g.name.endswith(":k")).gather("data")
    for h in range(H):
        assert torch.equal(k[h], w[(3 * h + 1) * D:(3 * h + 2) * D].detach().reshape(-1))
    clash = HeadLayout(num_heads="n_heads", q=TensorBlock("qkv.weight", 0, 0, None, H, 3, 0),
                       k=TensorBlock("qkv.weight", 0, 0, None, 2, 6, 0))  # slots 0-1, 6-7 meet q's 0, 6
    with pytest.raises(ValueError, match="overlapping"):
        HeadParticles(Packed(), layouts={Packed: clash})
    with pytest.raises(ValueError, match=r"expected 4 heads in 4 interleaved units of 3 slots"):
        find_attention(Packed(), {Packed: HeadLayout(num_heads="n_heads",
                                                     q=TensorBlock("qkv.weight", 0, 0, 40, H, 3, 0))})


def test_sites_are_labelled_with_their_kind_in_reports():
    text = describe_attention(_build("transformer"))
    assert "1 self, 1 cross, 1 decoder_self" in text
    assert "decoder.layers.0.multihead_attn: MultiheadAttention, cross, 4 heads" in text
    report = HeadParticles(_build("transformer"), kinds="decoder_self").report()
    assert report.startswith("1 attention module(s)") and "decoder_self" in report
