"""Head diversity metrics on inputs with known answers, capture on real models, and the recorder."""

import math

import pytest
import torch
from torch import nn

from attention_adapter import (
    HeadParticles,
    HeadRecorder,
    RepulsiveHeads,
    attention_map_distance,
    head_diversity,
    head_output_similarity,
    lin_redundancy,
    mean_offdiagonal,
    pairwise_cosine,
)


pytestmark = pytest.mark.usefixtures("torch_one_thread")



def _one_hot_maps(targets, b=2, t=3, s=5):
    """maps[b, h, t, :] = one-hot at targets[h]."""
    m = len(targets)
    maps = torch.zeros(b, m, t, s)
    for h, j in enumerate(targets):
        maps[:, h, :, j] = 1.0
    return maps


def test_pairwise_cosine_known_values():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    expected = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]])
    torch.testing.assert_close(pairwise_cosine(x), expected)
    assert float(mean_offdiagonal(expected)) == pytest.approx(-1.0 / 3.0)
    with pytest.raises(ValueError, match=r"\(M, P\)"):
        pairwise_cosine(torch.zeros(2, 2, 2))
    with pytest.raises(TypeError, match="torch.Tensor"):
        pairwise_cosine([[1.0]])


def test_attention_map_distance_and_lin_on_known_maps():
    same = _one_hot_maps([0, 0, 0])
    disjoint = _one_hot_maps([0, 1, 2])
    torch.testing.assert_close(attention_map_distance(same), torch.zeros(3, 3))
    js = attention_map_distance(disjoint)
    torch.testing.assert_close(js, math.log(2) * (1 - torch.eye(3)), rtol=1e-5, atol=1e-6)
    # Lin et al.: ||A A^T - I||_F = sqrt(M (M - 1)) for identical one-hot heads, 0 for disjoint ones
    assert float(lin_redundancy(same)) == pytest.approx(math.sqrt(6.0))
    assert float(lin_redundancy(disjoint)) == pytest.approx(0.0, abs=1e-6)
    # uniform maps over S keys: A A^T = (1/S) 11^T
    uni = torch.full((1, 2, 4, 5), 0.2)
    expected = math.sqrt(2 * (0.2 - 1) ** 2 + 2 * 0.2**2)
    assert float(lin_redundancy(uni)) == pytest.approx(expected, rel=1e-5)


def test_map_metrics_respect_the_query_mask():
    maps = _one_hot_maps([0, 1], b=1, t=2)
    maps[0, 1, 1] = maps[0, 0, 1]  # at query 1 both heads agree
    mask = torch.tensor([[True, False]])
    assert float(attention_map_distance(maps, mask)[0, 1]) == pytest.approx(math.log(2), rel=1e-5)
    assert float(attention_map_distance(maps)[0, 1]) == pytest.approx(math.log(2) / 2, rel=1e-5)
    with pytest.raises(ValueError, match=r"mask of shape \(B, T\)"):
        attention_map_distance(maps, torch.ones(2, 2, dtype=torch.bool))


def test_head_output_similarity_shapes():
    out = torch.randn(2, 3, 4, 5)
    out[:, :, 1] = 2 * out[:, :, 0]
    sim = head_output_similarity(out)
    assert sim.shape == (4, 4)
    assert float(sim[0, 1]) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"\(B, T, M, d\)"):
        head_output_similarity(torch.zeros(3, 4))


def test_head_diversity_on_a_transformer_layer_collapsed_vs_random():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True).eval()
    x = torch.randn(2, 6, 16)
    rnd = head_diversity(layer, lambda: layer(x))["self_attn"].summary()
    with torch.no_grad():  # collapse: every head a copy of head 0 (Q, K, V and biases)
        w, b = layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias
        for r in range(3):
            blk = w[r * 16:(r + 1) * 16].view(4, 4, 16)
            blk[:] = blk[0:1].clone()
            bb = b[r * 16:(r + 1) * 16].view(4, 4)
            bb[:] = bb[0:1].clone()
    col = head_diversity(layer, lambda: layer(x))["self_attn"].summary()
    for key in ("param_cos_q", "param_cos_k", "param_cos_v", "output_cos"):
        assert col[key] == pytest.approx(1.0, abs=1e-5)
        assert rnd[key] < 0.9
    assert col["map_js"] == pytest.approx(0.0, abs=1e-6) and rnd["map_js"] > 1e-3
    assert col["lin"] > rnd["lin"]


def test_head_diversity_on_hugging_face_models():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=32, attn_implementation="eager")
    model = transformers.BertModel(cfg).eval()
    x = torch.randint(0, 30, (2, 5))
    div = head_diversity(model, lambda: model(x), mask=torch.ones(2, 5, dtype=torch.bool))
    assert list(div) == ["encoder.layer.0.attention", "encoder.layer.1.attention"]
    for d in div.values():
        assert d.output_cosine.shape == (4, 4) and d.map_distance.shape == (4, 4)
        assert set(d.summary()) == {"param_cos_q", "param_cos_k", "param_cos_v", "circuit_cos_qk-circuit",
                                    "circuit_cos_ov-circuit", "output_cos", "map_js", "lin"}
    # without a forward pass only the parameter similarities
    only = head_diversity(RepulsiveHeads(model))["encoder.layer.0.attention"]
    assert only.output_cosine is None and only.map_distance is None and only.lin_redundancy is None
    with pytest.raises(TypeError, match="nn.Module"):
        head_diversity("bert")


def test_recorder_snapshots_pca_and_plot():
    torch.manual_seed(0)
    model = nn.MultiheadAttention(8, 2)
    heads = HeadParticles(model)
    rec = HeadRecorder(heads, every=2, groups=[":q"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = rec.attach(opt)
    x = torch.randn(3, 1, 8)
    for _ in range(5):
        opt.zero_grad()
        model(x, x, x)[0].pow(2).sum().backward()
        opt.step()
    handle.remove()
    assert rec.steps == [0, 2, 4]
    snaps = rec.snapshots(":q")
    assert snaps.shape == (3, 2, 32)
    assert torch.equal(snaps[-1], model.in_proj_weight.detach()[:8].reshape(2, -1))
    coords, explained = rec.pca(":q", k=2)
    assert coords.shape == (3, 2, 2) and explained.shape == (2,)
    assert float(explained.sum()) <= 1.0 + 1e-6 and float(explained[0]) >= float(explained[1])
    # PCA coordinates preserve pairwise distances up to the discarded variance: with k = full rank, exactly
    full, ev = rec.pca(":q", k=6)
    flat = snaps.reshape(6, -1).double()
    torch.testing.assert_close(torch.cdist(full.reshape(6, -1).double(), full.reshape(6, -1).double()),
                               torch.cdist(flat, flat), rtol=1e-4, atol=1e-5)
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = rec.plot(":q")
    assert len(ax.lines) == 2 and "PC1" in ax.get_xlabel()
    plt.close("all")
    with pytest.raises(ValueError, match="unknown group"):
        HeadRecorder(heads, groups=["nope"])
    with pytest.raises(ValueError, match="no snapshot"):
        HeadRecorder(heads).snapshots()
    with pytest.raises(ValueError, match="every"):
        HeadRecorder(heads, every=0)


def test_recorder_keeps_at_most_max_snapshots():
    rec = HeadRecorder(nn.MultiheadAttention(8, 2), max_snapshots=2)
    for i in range(4):
        rec.record(step=10 * i)
    assert rec.steps == [20, 30] and rec.snapshots().shape[0] == 2


def test_recorder_record_without_step_labels_snapshots_with_a_running_count():
    """Regression: record() without ``step`` labelled every snapshot 0 (the count only advanced in
    attach's hook)."""
    model = nn.MultiheadAttention(8, 2)
    rec = HeadRecorder(model, max_snapshots=3)
    for i in range(4):
        with torch.no_grad():
            model.in_proj_weight.add_(1.0)  # a different state per snapshot
        rec.record()
    assert rec.steps == [1, 2, 3]
    torch.testing.assert_close(rec.snapshots()[-1], model.in_proj_weight.detach()[:8].reshape(2, -1))
    rec.record(step=100)
    rec.record()
    assert rec.steps == [3, 100, 5]  # the count is of snapshots recorded, an explicit label does not reset it


def test_recorder_refuses_an_empty_group_list_and_accepts_one_name():
    heads = HeadParticles(nn.MultiheadAttention(8, 2))
    with pytest.raises(ValueError, match="expected groups as None .all. or a non-empty sequence of names among "
                                         r"\[':q', ':k', ':v'\], received an empty sequence"):
        HeadRecorder(heads, groups=[])
    assert HeadRecorder(heads, groups=":k").group_names == [":k"]
    with pytest.warns(DeprecationWarning, match="HeadRecorder.heads is deprecated"):
        assert HeadRecorder(heads).heads is heads
