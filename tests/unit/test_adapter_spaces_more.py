"""Circuit space, more: the recorder's circuit similarity (any selection), cross-attention's circuits
against hand-cut products, and Lin et al.'s attention hops, whose circuits are their weights.

The references form each head's d_model x d_model (or d_model x kdim) circuits ``W_q^h^T W_k^h`` and
``W_o^h W_v^h`` explicitly from the documented tensor layouts (torch's ``out x in`` Linear layout).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from attention_adapter import HeadRecorder, HeadSelection, RepulsiveHeads
from attention_adapter.spaces import CircuitStructure, circuit_particles

pytestmark = pytest.mark.usefixtures("torch_one_thread")
E, H = 16, 4
D = E // H


def _cosine(flat):
    u = flat / flat.norm(dim=1, keepdim=True)
    return (u @ u.T).float()


def _mha_circuits(mha):
    """Per head, the explicit QK and OV circuits of a packed ``nn.MultiheadAttention`` (no biases), flattened."""
    w, wo = mha.in_proj_weight.detach(), mha.out_proj.weight.detach()
    cut = lambda base, h: w[base + h * D:base + (h + 1) * D]  # noqa: E731
    qk = torch.stack([(cut(0, h).T @ cut(E, h)).reshape(-1) for h in range(H)])
    ov = torch.stack([(wo[:, h * D:(h + 1) * D] @ cut(2 * E, h)).reshape(-1) for h in range(H)])
    return qk, ov


def _reparametrise_mha(mha, seed=11):
    """Per head: ``W_q -> R^T W_q``, ``W_k -> R^{-1} W_k``, ``W_v -> S W_v``, ``W_o -> W_o S^{-1}`` (biases
    with them)."""
    gen = torch.Generator().manual_seed(seed)
    w, b, wo = mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight
    with torch.no_grad():
        for h in range(H):
            r = torch.eye(D, dtype=w.dtype) + 0.3 * torch.randn(D, D, generator=gen, dtype=w.dtype)
            s = torch.eye(D, dtype=w.dtype) + 0.3 * torch.randn(D, D, generator=gen, dtype=w.dtype)
            q, k, v = (slice(base + h * D, base + (h + 1) * D) for base in (0, E, 2 * E))
            for sl, m in ((q, r.T), (k, torch.linalg.inv(r)), (v, s)):
                w[sl] = m @ w[sl]
                b[sl] = m @ b[sl]
            wo[:, h * D:(h + 1) * D] = wo[:, h * D:(h + 1) * D] @ torch.linalg.inv(s)


# ---------------------------------------------------------------------------------------------
# the recorder
# ---------------------------------------------------------------------------------------------


def test_recorder_circuits_on_the_default_selection_are_the_explicit_circuits_and_invariant():
    """On the default weight-space selection the groups hold Q, K and V apart; the recorder still compares the
    module's heads by their circuits: Q and K groups by ``W_q^T W_k``, the V group by ``W_o W_v`` (not by the
    group's own rows), unchanged by the per-head R/S reparametrisation, which moves the weights' cosine."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_bias.normal_()  # moved by S: not in the circuits (include_bias=False), so harmless
    rec = HeadRecorder(mha, circuits=True)
    assert rec.group_names == [":q", ":k", ":v"]
    rec.record()
    x = torch.randn(2, 5, E, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out_before = mha(x, x, x)[0]
    _reparametrise_mha(mha)
    torch.testing.assert_close(mha(x, x, x)[0], out_before, rtol=1e-9, atol=1e-9)  # the symmetry is exact
    rec.record()
    qk, ov = _mha_circuits(mha)
    for name, ref in ((":q", _cosine(qk)), (":k", _cosine(qk)), (":v", _cosine(ov))):
        sims = rec.similarity(name, "circuits")
        assert sims.shape == (2, H, H) and sims.dtype == torch.float32
        for t in range(2):
            torch.testing.assert_close(sims[t], ref, rtol=1e-5, atol=1e-6)
        weights = rec.similarity(name, "weights")
        assert float((sims[0] - weights[0]).abs().max()) > 1e-2  # not the cosine of the group's own rows
        assert float((weights[0] - weights[1]).abs().max()) > 1e-2  # the weights' cosine moved
    torch.testing.assert_close(rec.mean_similarity(":v", "circuits"), torch.stack([
        (s.sum() - s.diagonal().sum()) / (H * (H - 1)) for s in rec.similarity(":v", "circuits")]))


def test_recorder_joint_groups_sum_both_circuits_and_biases_follow_the_selection():
    torch.manual_seed(2)
    mha = nn.MultiheadAttention(E, H, batch_first=True).double()
    rec = HeadRecorder(HeadSelection(particles="joint").build(nn.Sequential(mha)), groups="0:qkv", circuits=True)
    rec.record()
    qk, ov = _mha_circuits(mha)
    torch.testing.assert_close(rec.similarity("0:qkv", "circuits")[0], _cosine(torch.cat([qk, ov], dim=1)),
                               rtol=1e-5, atol=1e-6)
    # with include_bias the QK circuit is [W_q^T; b_q^T][W_k^T; b_k^T]^T (the bias augments the input)
    with torch.no_grad():
        mha.in_proj_bias.normal_(generator=torch.Generator().manual_seed(3))
    biased = HeadRecorder(HeadSelection(include_bias=True).build(nn.Sequential(mha)), groups="0:q", circuits=True)
    biased.record()
    w, b = mha.in_proj_weight.detach(), mha.in_proj_bias.detach()
    aug = lambda base, h: torch.cat([w[base + h * D:base + (h + 1) * D].T,  # noqa: E731
                                     b[None, base + h * D:base + (h + 1) * D]])
    ref = torch.stack([(aug(0, h) @ aug(E, h).T).reshape(-1) for h in range(H)])
    torch.testing.assert_close(biased.similarity("0:q", "circuits")[0], _cosine(ref), rtol=1e-5, atol=1e-6)


def test_recorder_circuits_follow_max_snapshots_and_can_be_left_out():
    torch.manual_seed(4)
    mha = nn.MultiheadAttention(E, H).double()
    rec = HeadRecorder(mha, max_snapshots=2, circuits=True)
    kept = []
    for i in range(3):
        with torch.no_grad():
            mha.in_proj_weight.add_(0.1 * torch.randn_like(mha.in_proj_weight))
        rec.record()
        kept.append(_cosine(_mha_circuits(mha)[0]))
    sims = rec.similarity(":k", "circuits")
    assert sims.shape == (2, H, H)
    for got, want in zip(sims, kept[1:]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    bare = HeadRecorder(mha)  # circuits are opt-in
    bare.record()
    assert bare.similarity(":q").shape == (1, H, H)
    with pytest.raises(ValueError, match="circuits=False"):
        bare.similarity(":q", "circuits")
    with pytest.raises(ValueError, match="no snapshot"):
        HeadRecorder(mha, circuits=True).similarity(":q", "circuits")


def test_recorder_refuses_outputs_and_names_what_to_use():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=30, hidden_size=E, num_hidden_layers=1, num_attention_heads=H,
                                  intermediate_size=32, attn_implementation="eager")
    model = transformers.BertModel(cfg)
    heads = RepulsiveHeads(model, "svgd", space="outputs")
    rec = HeadRecorder(heads, circuits=True)
    model(torch.tensor([[1, 5, 7]])).last_hidden_state.pow(2).mean().backward()
    heads.apply()
    rec.record()
    (name,) = rec.group_names
    with pytest.raises(ValueError, match=r"head_diversity\(model, forward="):
        rec.similarity(name, "outputs")
    assert rec.similarity(name, "circuits").shape == (1, H, H)  # the q, k, v group: both circuits, joined
    heads.remove_hooks()


# ---------------------------------------------------------------------------------------------
# cross-attention
# ---------------------------------------------------------------------------------------------


def _products(structure, rows):
    return [t[0] @ t[1].transpose(1, 2) if isinstance(t, tuple) else t for t in structure.to_terms(rows)]


def test_decoder_cross_attention_circuits_equal_hand_cut_products():
    """nn.TransformerDecoderLayer's ``multihead_attn`` (queries from the decoder, keys and values from the
    encoder's memory): packed ``in_proj_weight``, biases in the circuits with ``include_bias``."""
    torch.manual_seed(5)
    layer = nn.TransformerDecoderLayer(E, H, dim_feedforward=24, dropout=0.0, batch_first=True).double()
    heads = circuit_particles(HeadSelection(particles="joint", include_bias=True).build(layer))
    by_name = {g.site.name: g for g in heads.groups}
    assert set(by_name) == {"self_attn", "multihead_attn"}
    g = by_name["multihead_attn"]
    assert g.site.attention == "cross"
    qk, ov = _products(CircuitStructure(g), g.gather("data"))
    att = layer.multihead_attn
    w, b, wo = att.in_proj_weight, att.in_proj_bias, att.out_proj.weight
    aug = lambda base, h: torch.cat([w[base + h * D:base + (h + 1) * D].T,  # noqa: E731
                                     b[None, base + h * D:base + (h + 1) * D]])
    for h in range(H):
        torch.testing.assert_close(qk[h], aug(0, h) @ aug(E, h).T)
        torch.testing.assert_close(ov[h], wo[:, h * D:(h + 1) * D] @ aug(2 * E, h).T)


def test_cross_attention_with_other_key_and_value_widths():
    """``nn.MultiheadAttention(E, H, kdim, vdim)``: separate projections, ``W_k`` reads ``kdim`` and ``W_v``
    ``vdim`` features, so the QK circuit is ``E x kdim`` and the OV circuit ``E x vdim``."""
    torch.manual_seed(6)
    kdim, vdim = 6, 10
    mha = nn.MultiheadAttention(E, H, kdim=kdim, vdim=vdim, batch_first=True).double()
    heads = circuit_particles(HeadSelection().build(nn.Sequential(mha)))
    qk_g, ov_g = heads.groups
    (qk,) = _products(CircuitStructure(qk_g), qk_g.gather("data"))
    (ov,) = _products(CircuitStructure(ov_g), ov_g.gather("data"))
    assert qk.shape == (H, E, kdim) and ov.shape == (H, E, vdim)
    for h in range(H):
        s = slice(h * D, (h + 1) * D)
        torch.testing.assert_close(qk[h], mha.q_proj_weight[s].T @ mha.k_proj_weight[s])
        torch.testing.assert_close(ov[h], mha.out_proj.weight[:, s] @ mha.v_proj_weight[s])
    # and the recorder compares the heads by these circuits too
    rec = HeadRecorder(mha, circuits=True)
    rec.record()
    torch.testing.assert_close(rec.similarity(":v", "circuits")[0], _cosine(ov.reshape(H, -1)), rtol=1e-5, atol=1e-6)


def test_t5_cross_attention_circuits_equal_hand_cut_products():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(7)
    cfg = transformers.T5Config(vocab_size=32, d_model=E, d_kv=D, d_ff=24, num_layers=1, num_decoder_layers=1,
                                num_heads=H, dropout_rate=0.0)
    model = transformers.T5Model(cfg).double()
    sel = HeadSelection(kinds=("cross",))
    qk_g, ov_g = circuit_particles(sel.build(model)).groups
    assert qk_g.site.name == "decoder.block.0.layer.1.EncDecAttention"
    (qk,) = _products(CircuitStructure(qk_g), qk_g.gather("data"))
    (ov,) = _products(CircuitStructure(ov_g), ov_g.gather("data"))
    at = model.decoder.block[0].layer[1].EncDecAttention
    for h in range(H):
        s = slice(h * D, (h + 1) * D)
        torch.testing.assert_close(qk[h], at.q.weight[s].T @ at.k.weight[s])
        torch.testing.assert_close(ov[h], at.o.weight[:, s] @ at.v.weight[s])


# ---------------------------------------------------------------------------------------------
# Lin et al.'s attention hops: circuits are the weights
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["svgd", "spos"])
def test_self_attentive_hops_update_is_the_same_in_circuit_and_weight_space(method):
    """The hops ``a_h = softmax(w_h^T tanh(W_s1 H^T))`` have one query row per hop and no key, value or
    output block: the circuit particle is the row itself (a plain term), so with the same settings
    ``space="circuits"`` gives the ``space="weights"`` update, and the recorder's two similarities agree."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.attention.models import SelfAttentiveClassifier

    torch.manual_seed(0)
    base = SelfAttentiveClassifier(20, 2, embed=8, units=4, d_a=6, hops=5, hidden=8, dropout=0.0).double()
    ids = torch.randint(1, 20, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 7, dtype=torch.long)
    grads = {}
    for space in ("weights", "circuits"):
        model = copy.deepcopy(base)
        kw = dict(lr=0.1) if method == "spos" else {}
        heads = RepulsiveHeads(model, method, repulsion=0.7, step_size=0.4, space=space,
                               selection=model.head_selection(), **kw)
        (g,) = heads.groups
        assert g.roles == ("q",) and g.num_particles == 5
        model.zero_grad()
        nn.functional.cross_entropy(model(ids, mask), torch.tensor([0, 1, 1])).backward()
        before = model.hops.ws2.weight.grad.clone()
        heads.apply()
        grads[space] = model.hops.ws2.weight.grad
        assert float((grads[space] - before).abs().max()) > 1e-6  # the update did change the gradient
        rec = HeadRecorder(heads, circuits=True)
        rec.record()
        torch.testing.assert_close(rec.similarity(g.name, "circuits"), rec.similarity(g.name, "weights"),
                                   rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads["circuits"], grads["weights"], rtol=1e-10, atol=1e-12)


def test_a_failed_record_leaves_the_snapshots_aligned(monkeypatch):
    """A snapshot whose circuits fail to form (out of memory, say) stores nothing: the step labels, the
    particle snapshots and the circuit Grams keep one entry per successful record()."""
    import attention_adapter.recorder as recorder_module

    mha = nn.MultiheadAttention(E, H).double()
    rec = HeadRecorder(mha, circuits=True)
    rec.record()

    def fail(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(recorder_module, "circuit_gram", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        rec.record()
    monkeypatch.undo()
    rec.record()
    assert rec.steps == [0, 1] and len(rec) == 2
    assert rec.snapshots(":q").shape[0] == 2 and rec.similarity(":q", "circuits").shape == (2, H, H)
    with pytest.raises((TypeError, ValueError), match="circuits"):
        HeadRecorder(mha, circuits="yes")
