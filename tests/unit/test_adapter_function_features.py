"""Function space with attention maps: ``RepulsiveHeads(space="outputs", features="maps" | "both")``.

The references recompute each head's attention rows (and output vectors) by hand from its own rows
of the BERT layer's Q/K/V weights, take the explicit Jacobian of that recomputation in the head's
parameters, and form ``Ĝ = -e [K S / M + a J^T R / M]`` with the kernel and the repulsion written out.
"""

from __future__ import annotations

import pytest
import torch

import particlesampling as ps
from attention_adapter import HeadRepulsionPenalty, RepulsiveHeads
from attention_adapter.noise import step_seed
from attention_adapter.outputs import OutputParticles, joined_features

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("torch_one_thread")
E, H = 16, 4
D = E // H
IDS = torch.tensor([[1, 5, 7, 2, 9, 3, 4]])
T = IDS.shape[1]


def _bert(attn="eager"):
    torch.manual_seed(0)  # no dropout: the references recompute the heads in training mode
    cfg = transformers.BertConfig(vocab_size=30, hidden_size=E, num_hidden_layers=1, num_attention_heads=H,
                                  intermediate_size=32, attn_implementation=attn, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0)
    return transformers.BertModel(cfg).double()


def _positions(seed, step, n, tokens, index=0):
    gen = torch.Generator().manual_seed(step_seed(step_seed(seed, step), index))
    return torch.randperm(n, generator=gen)[:tokens].sort().values


def _head(model, h, q_rows, k_rows, v_rows=None):
    """Head ``h``'s attention matrix (T, T) and output vectors W_o^h o_h (T, E), recomputed by hand."""
    att = model.encoder.layer[0].attention
    sa, s = att.self, slice(h * D, (h + 1) * D)
    hidden = model.embeddings(IDS).detach()[0]
    q = hidden @ q_rows.T + sa.query.bias[s].detach()
    k = hidden @ k_rows.T + sa.key.bias[s].detach()
    a = torch.softmax(q @ k.T / D ** 0.5, dim=-1)
    if v_rows is None:
        return a, None
    v = hidden @ v_rows.T + sa.value.bias[s].detach()
    return a, (a @ v) @ att.output.dense.weight[:, s].detach().T


def _rbf_repulsion(f, k, h):
    """``R_i = sum_j grad_{f_j} k(f_j, f_i) = -(2/h) sum_j K_ji (f_j - f_i)`` (RBF, bandwidth h)."""
    return torch.stack([sum(-(2.0 / h) * (f[j] - f[i]) * k[j, i] for j in range(H)) for i in range(H)])


def _apply(model, heads):
    model.zero_grad()
    model(IDS).last_hidden_state.pow(2).mean().backward()
    (g,) = heads.groups
    x, grad = g.gather("data"), g.gather("grad").clone()
    heads.apply()
    return g, x, grad


def test_maps_equal_brute_force_jacobians():
    model = _bert()
    heads = RepulsiveHeads(model, "svgd", repulsion=0.7, step_size=0.5, space="outputs", features="maps",
                           tokens=5, seed=3)
    g, x, grad = _apply(model, heads)
    assert g.roles == ("q", "k") and g.name.endswith("qk-maps")  # the maps depend on Q and K only
    idx = _positions(3, 0, T, 5)

    def head_map(rows, h):
        a, _ = _head(model, h, rows[:D * E].reshape(D, E), rows[D * E:].reshape(D, E))
        return a[idx].reshape(-1)  # the attention rows of the sampled query positions

    f = torch.stack([head_map(x[h], h) for h in range(H)])
    hband = float(ps.get_bandwidth(None)(f, ps.sqdist(f)))
    k = torch.exp(-torch.cdist(f, f) ** 2 / hband)
    rf = _rbf_repulsion(f, k, hband)
    jr = torch.stack([torch.autograd.functional.jacobian(lambda t: head_map(t, h), x[h]).T @ rf[h] for h in range(H)])
    want = -0.5 * (k @ (-grad) / H + 0.7 * jr / H)
    torch.testing.assert_close(g.gather("grad"), want, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(heads.last_info.groups[g.name].mean_kernel,
                               (k.sum() - k.diagonal().sum()) / (H * (H - 1)))
    heads.remove_hooks()


def test_outputs_and_maps_joined_each_in_units_of_its_own_bandwidth():
    model = _bert()
    heads = RepulsiveHeads(model, "svgd", repulsion=0.3, step_size=2.0, space="outputs", features="both",
                           tokens=4, seed=11)
    g, x, grad = _apply(model, heads)
    assert g.roles == ("q", "k", "v")
    idx = _positions(11, 0, T, 4)

    def parts(rows, h):
        a, o = _head(model, h, *(rows[i * D * E:(i + 1) * D * E].reshape(D, E) for i in range(3)))
        return o[idx].reshape(-1), a[idx].reshape(-1)

    fo = torch.stack([parts(x[h], h)[0] for h in range(H)])
    fa = torch.stack([parts(x[h], h)[1] for h in range(H)])
    rule = ps.get_bandwidth(None)
    ho, ha = (float(rule(f, ps.sqdist(f))) for f in (fo, fa))
    d2 = torch.cdist(fo, fo) ** 2 / ho + torch.cdist(fa, fa) ** 2 / ha
    k = torch.exp(-d2)  # = k_outputs * k_maps for the RBF kernel

    def joined(rows, h):
        o, a = parts(rows, h)
        return torch.cat([o / ho ** 0.5, a / ha ** 0.5])

    fj = torch.stack([joined(x[h], h) for h in range(H)])
    torch.testing.assert_close(torch.cdist(fj, fj) ** 2, d2)
    rf = _rbf_repulsion(fj, k, 1.0)
    jr = torch.stack([torch.autograd.functional.jacobian(lambda t: joined(t, h), x[h]).T @ rf[h] for h in range(H)])
    want = -2.0 * (k @ (-grad) / H + 0.3 * jr / H)
    torch.testing.assert_close(g.gather("grad"), want, rtol=1e-7, atol=1e-10)
    heads.remove_hooks()


def test_joined_features_with_a_fixed_bandwidth_is_the_plain_concatenation():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 6, generator=gen, dtype=torch.float64), torch.randn(4, 3, generator=gen, dtype=torch.float64)
    scales, bw = joined_features([a, b], 2.5)
    assert bw == 1.0
    j = torch.cat([a * scales[0], b * scales[1]], 1)
    torch.testing.assert_close(torch.cdist(j, j) ** 2, torch.cdist(torch.cat([a, b], 1), torch.cat([a, b], 1)) ** 2 / 2.5)
    assert joined_features([a], "an2020") == ((1.0,), "an2020")
    with pytest.raises(ValueError, match="scores"):
        joined_features([a, b], ps.MaxKSD())


def _record_parts(model, seed, step=0, features="maps", tokens=3):
    heads = RepulsiveHeads(model, "svgd", space="outputs", features=features)
    got = []
    rec = OutputParticles(heads.groups, lambda g, parts, params: got.append(parts), tokens=tokens, seed=seed,
                          features=features)
    heads.remove_hooks()
    rec.step = step
    model(IDS)
    rec.remove()
    return got[0]


def test_token_subsample_is_fixed_by_seed_step_and_module():
    model = _bert()
    with torch.no_grad():  # the attention matrix of every head, by hand (the model's own values)
        full = torch.stack([_head(model, h, model.encoder.layer[0].attention.self.query.weight[h * D:(h + 1) * D],
                                  model.encoder.layer[0].attention.self.key.weight[h * D:(h + 1) * D])[0]
                            for h in range(H)])
    for seed, step in ((0, 0), (0, 1), (5, 0)):
        (maps,) = _record_parts(model, seed, step)
        idx = _positions(seed, step, T, 3)
        torch.testing.assert_close(maps.detach(), full[:, idx].reshape(H, -1))
        (again,) = _record_parts(model, seed, step)
        assert torch.equal(maps, again)  # the same draw every time
    assert not torch.equal(_positions(0, 0, T, 3), _positions(0, 1, T, 3))
    assert not torch.equal(_positions(0, 0, T, 3), _positions(5, 0, T, 3))
    (everything,) = _record_parts(model, 0, tokens=100)  # fewer positions than tokens: all of them
    torch.testing.assert_close(everything.detach(), full.reshape(H, -1))


def test_fused_attention_without_maps_is_refused_by_name():
    model = _bert("sdpa")
    heads = RepulsiveHeads(model, "svgd", space="outputs", features="maps")
    with pytest.raises(ValueError, match=r"encoder\.layer\.0\.attention.*eager"):
        model(IDS)
    heads.remove_hooks()
    outputs_only = RepulsiveHeads(model, "svgd", space="outputs")  # the outputs need no maps
    model(IDS).last_hidden_state.sum().backward()
    outputs_only.apply()
    outputs_only.remove_hooks()


def test_multihead_attention_maps_are_the_modules_own():
    torch.manual_seed(1)
    layer = torch.nn.TransformerEncoderLayer(E, H, 32, dropout=0.0, batch_first=True)
    model = torch.nn.TransformerEncoder(layer, 1, enable_nested_tensor=False).double()
    x = torch.randn(2, 5, E, dtype=torch.float64)
    heads = RepulsiveHeads(model, "svgd", space="outputs", features="maps")
    assert [g.roles for g in heads.groups] == [("q", "k")]
    got = []
    rec = OutputParticles(heads.groups, lambda g, parts, params: got.append(parts[0]), tokens=4, seed=2,
                          features="maps")
    model(x).sum().backward()
    rec.remove()
    attn = model.layers[0].self_attn
    _, maps = attn(x, x, x, need_weights=True, average_attn_weights=False)  # (N, M, L, S)
    idx = _positions(2, 0, 10, 4)
    torch.testing.assert_close(got[0].detach(), maps.transpose(1, 2).reshape(10, H, 5)[idx].transpose(0, 1).reshape(H, -1))
    before = heads.groups[0].gather("grad").clone()
    heads.apply()
    assert not torch.equal(before, heads.groups[0].gather("grad"))
    heads.remove_hooks()


def test_features_argument_checks():
    model = _bert()
    with pytest.raises(ValueError, match="features"):
        RepulsiveHeads(model, space="weights", features="maps")
    with pytest.raises(ValueError, match="features"):
        RepulsiveHeads(model, space="outputs", features="attention")
    with pytest.raises(ValueError, match="features"):
        HeadRepulsionPenalty(model, space="circuits", features="both")
    a = RepulsiveHeads(model, space="outputs", features="maps")
    b = RepulsiveHeads(model, space="outputs")
    assert a.state_dict()["features"] == "maps"
    with pytest.raises(ValueError, match="does not match"):
        b.load_state_dict(a.state_dict())
    old = {k: v for k, v in b.state_dict().items() if k != "features"}  # a state dict from before the option
    b.load_state_dict(old)
    a.remove_hooks()
    b.remove_hooks()


def test_penalty_with_both_features_is_the_product_kernel():
    model = _bert()
    pen = HeadRepulsionPenalty(model, weight=1.5, space="outputs", features="both", tokens=3)
    got = []
    rec = OutputParticles(pen.head_particles.groups, lambda g, parts, params: got.append(parts), tokens=3, seed=0,
                          features="both")
    model(IDS)
    rec.remove()
    fo, fa = (p.detach() for p in got[0])
    rule = ps.get_bandwidth(None)
    k = torch.exp(-torch.cdist(fo, fo) ** 2 / rule(fo, ps.sqdist(fo)) - torch.cdist(fa, fa) ** 2 / rule(fa, ps.sqdist(fa)))
    value = pen()
    torch.testing.assert_close(value, 1.5 * (k.sum() - k.diagonal().sum()) / (H * (H - 1)))
    value.backward()
    assert model.encoder.layer[0].attention.self.key.weight.grad.abs().sum() > 0  # through the maps
    pen.remove_hooks()


def test_self_attentive_hops_are_compared_by_their_maps():
    """Lin et al.'s hops (``a_h = softmax(w_h^T tanh(W_s1 H^T))``, no output projection): with a layout
    that does not declare where the head outputs are, ``features="outputs"`` is refused by name;
    ``"maps"`` reads the (B, r, 1, T) maps the module returns and matches the hand-made reference on
    the hop rows."""
    import dataclasses
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from attention_adapter import HeadSelection
    from benchmarks.attention.models import HOPS_LAYOUT, SelfAttentiveClassifier, SelfAttentiveHops

    torch.manual_seed(0)
    model = SelfAttentiveClassifier(20, 2, embed=8, units=4, d_a=6, hops=3, hidden=8, dropout=0.0).double()
    ids = torch.randint(1, 20, (2, 5), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 5, dtype=torch.long)
    undeclared = HeadSelection(layouts={SelfAttentiveHops: dataclasses.replace(HOPS_LAYOUT, head_outputs=None)})
    with pytest.raises(ValueError, match="features='maps'"):
        RepulsiveHeads(model, space="outputs", selection=undeclared)
    heads = RepulsiveHeads(model, "svgd", repulsion=0.9, space="outputs", features="maps", tokens=8,
                           selection=model.head_selection())
    (g,) = heads.groups
    assert g.roles == ("q",) and g.num_particles == 3
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(ids, mask), torch.tensor([0, 1])).backward()
    x, grad = g.gather("data"), g.gather("grad").clone()
    heads.apply()
    h_states = model.lstm(model.embed(ids))[0].detach()  # (2, 5, 8)
    pre = torch.tanh(model.hops.ws1(h_states)).detach()  # (2, 5, 6)

    def hop_map(w):  # (6,) -> the hop's maps on both sequences (one "query position" each: 2 <= 8 tokens)
        return torch.softmax(pre @ w, dim=-1).reshape(-1)

    f = torch.stack([hop_map(x[h]) for h in range(3)])
    hband = float(ps.get_bandwidth(None)(f, ps.sqdist(f)))
    k = torch.exp(-torch.cdist(f, f) ** 2 / hband)
    rf = torch.stack([sum(-(2.0 / hband) * (f[j] - f[i]) * k[j, i] for j in range(3)) for i in range(3)])
    jr = torch.stack([torch.autograd.functional.jacobian(hop_map, x[h]).T @ rf[h] for h in range(3)])
    torch.testing.assert_close(g.gather("grad"), -(k @ (-grad) / 3 + 0.9 * jr / 3), rtol=1e-7, atol=1e-10)
    heads.remove_hooks()


def test_block_outside_the_site_reads_its_own_parameter():
    """A block whose parameter lives outside the attention module (e.g. an output projection in a sibling
    module) is read as that parameter, not as the site's parameter at the same suffix: ``"b.q.weight"`` cut by
    the length of site ``"a"`` would be ``"q.weight"``, which module ``a`` also has."""
    from types import SimpleNamespace

    from attention_adapter.outputs import _relative

    model = torch.nn.Module()
    model.a, model.b = torch.nn.Module(), torch.nn.Module()
    model.a.q, model.b.q = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    rec = OutputParticles([], lambda g, parts, params: None)
    site = SimpleNamespace(name="a", module=model.a)
    inside = SimpleNamespace(name="a.q.weight", param=model.a.q.weight)
    outside = SimpleNamespace(name="b.q.weight", param=model.b.q.weight)
    assert rec._current(site, inside) is model.a.q.weight
    assert rec._current(site, outside) is model.b.q.weight
    assert _relative(site, inside) == "q.weight" and _relative(site, outside) is None
    # a site that is the whole model: names are already relative to it
    root = SimpleNamespace(name="", module=model)
    assert rec._current(root, outside) is model.b.q.weight
