"""Pictures of attention heads: each one call from a model, a recorder or head_diversity's result, written to a
PNG and checked as an image and by what it draws (the matrices, the maps, one path per head)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import matplotlib  # noqa: E402  (pinned test dependency: imported, never skipped)
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from attention_adapter import (  # noqa: E402
    HeadCapture,
    HeadRecorder,
    RepulsiveHeads,
    find_attention,
    head_diversity,
    mean_offdiagonal,
    plot_attention_maps,
    plot_diversity_history,
    plot_head_similarity,
    plot_head_trajectories,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")
DPI = 40


def _colours(pixels: np.ndarray) -> int:
    """Number of distinct RGB colours of an (H, W, 3) array."""
    rgb = pixels.reshape(-1, 3).astype(np.int64)
    return len(np.unique((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]))


@pytest.fixture(autouse=True)

def _close_figures():
    yield
    plt.close("all")


def _check_png(fig, tmp_path):
    path = tmp_path / "figure.png"
    fig.savefig(path, dpi=DPI)
    with Image.open(path) as image:
        image.load()
    w, h = fig.get_size_inches() * DPI
    assert abs(image.size[0] - w) <= 1 and abs(image.size[1] - h) <= 1
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 1.0 and _colours(pixels) > 2


@pytest.fixture(scope="module")
def bert():
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, attn_implementation="eager")
    model = transformers.BertModel(config).eval()
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return model, ids, mask


def _images(fig):
    return [im for ax in fig.axes for im in ax.get_images()]


def test_attention_maps_of_one_input_per_head(bert, tmp_path):
    model, ids, mask = bert
    tokens = ["[CLS]", "a", "b", "c", "d"]
    fig = plot_attention_maps(model, lambda: model(ids, attention_mask=mask), layer=1, index=1, tokens=tokens, cols=3)
    cap = HeadCapture(find_attention(model)).run(lambda: model(ids, attention_mask=mask))
    expected = cap.maps["encoder.layer.1.attention"][1, :, :5, :5]
    images = _images(fig)
    assert len(images) == 4 and len(fig.axes) == 6  # 4 heads in a 2 x 3 grid
    for h, image in enumerate(images):
        np.testing.assert_allclose(image.get_array(), expected[h].numpy(), rtol=1e-6)
    left = fig.axes[0]
    assert [t.get_text() for t in left.get_yticklabels()] == tokens
    assert "encoder.layer.1.attention" in fig.get_suptitle()
    _check_png(fig, tmp_path)
    # from a capture or a mapping, the same pictures; heads chosen
    fig2 = plot_attention_maps(cap, layer="encoder.layer.1.attention", index=1, tokens=tokens, heads=[2])
    np.testing.assert_allclose(_images(fig2)[0].get_array(), expected[2].numpy(), rtol=1e-6)
    fig3 = plot_attention_maps(cap.maps, layer=-1)
    assert _images(fig3)[0].get_array().shape == (7, 7)


def test_attention_maps_refuse_bad_input(bert):
    model, ids, mask = bert
    cap = HeadCapture(find_attention(model)).run(lambda: model(ids))
    with pytest.raises(TypeError, match="forward="):
        plot_attention_maps(model)
    with pytest.raises(ValueError, match="expected layer"):
        plot_attention_maps(cap, layer=5)
    with pytest.raises(ValueError, match="at most 7 tokens"):
        plot_attention_maps(cap, tokens=["x"] * 8)
    with pytest.raises(ValueError, match="heads as indices"):
        plot_attention_maps(cap, heads=[4])
    with pytest.raises(ValueError, match="index in"):
        plot_attention_maps(cap, index=2)
    with pytest.raises(ValueError, match=r"\(B, M, T, S\)"):
        plot_attention_maps({"x": torch.zeros(2, 3)})
    with pytest.raises(TypeError, match="nn.Module"):
        plot_attention_maps("bert", lambda: None)


def test_head_similarity_heatmaps_per_layer(bert, tmp_path):
    model, ids, mask = bert
    div = head_diversity(model, lambda: model(ids, attention_mask=mask), mask=mask.bool())
    fig = plot_head_similarity(div, kind="map")
    images = _images(fig)
    assert len(images) == 2  # one per layer
    for image, d in zip(images, div.values()):
        np.testing.assert_allclose(image.get_array(), d.map_distance.numpy(), rtol=1e-6)
        assert image.get_clim() == (0.0, math.log(2.0))
    assert fig.axes[0].get_title() == f"layer 0: {float(mean_offdiagonal(div['encoder.layer.0.attention'].map_distance)):.2f}"
    assert len(fig.axes) == 3  # two heatmaps and the colour bar
    _check_png(fig, tmp_path)
    # rows: before and after; parameter groups; straight from the model
    rows = plot_head_similarity({"before": div, "after": div}, kind="parameter", group="v")
    assert len(_images(rows)) == 4 and rows.axes[0].get_ylabel() == "before"
    np.testing.assert_allclose(_images(rows)[1].get_array(),
                               div["encoder.layer.1.attention"].parameter_cosine["v"].numpy(), rtol=1e-6)
    direct = plot_head_similarity(model, lambda: model(ids), kind="output")
    assert len(_images(direct)) == 2


def test_head_similarity_refuses_bad_input(bert):
    model, _, _ = bert
    params_only = head_diversity(model)
    with pytest.raises(ValueError, match="forward="):
        plot_head_similarity(params_only, kind="map")
    with pytest.raises(ValueError, match="expected kind"):
        plot_head_similarity(params_only, kind="energy")
    with pytest.raises(ValueError, match="expected group"):
        plot_head_similarity(params_only, group="o")
    with pytest.raises(TypeError, match="head_diversity"):
        plot_head_similarity([1, 2])


def _recorded_run(repulsive: bool, steps: int = 6):
    torch.manual_seed(0)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True), 1,
                                  enable_nested_tensor=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    if repulsive:
        RepulsiveHeads(model, "svgd", step_size=1.0, repulsion=1.0).attach(optimizer)
    recorder = HeadRecorder(model, every=1, groups=["layers.0.self_attn:q"])
    recorder.attach(optimizer)
    x = torch.randn(4, 5, 16, generator=torch.Generator().manual_seed(2))
    for _ in range(steps):
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()
    return recorder


def test_head_trajectories_one_path_per_head(tmp_path):
    rec = _recorded_run(False)
    fig = plot_head_trajectories(rec)
    (ax,) = fig.axes
    assert len(ax.lines) == 4
    coords, explained = rec.pca("layers.0.self_attn:q", k=2)
    np.testing.assert_allclose(ax.lines[2].get_xdata(), coords[:, 2, 0].numpy(), rtol=1e-5, atol=1e-6)
    assert f"PC1 ({100 * float(explained[0]):.0f}%)" in ax.get_xlabel()
    _check_png(fig, tmp_path)
    # HeadRecorder.plot draws the same picture on the given axes
    fig2, ax2 = plt.subplots()
    assert rec.plot(ax=ax2) is ax2 and len(ax2.lines) == 4


def test_head_trajectories_of_two_runs_share_one_basis(tmp_path):
    plain, repulsive = _recorded_run(False), _recorded_run(True)
    fig = plot_head_trajectories({"plain": plain, "repulsive": repulsive}, relative=True)
    assert len(fig.axes) == 2 and fig.axes[1].get_title().startswith("repulsive")
    for ax in fig.axes:
        for line in ax.lines:  # displacements: every path starts at the origin
            assert line.get_xdata()[0] == pytest.approx(0.0, abs=1e-6)
            assert line.get_ydata()[0] == pytest.approx(0.0, abs=1e-6)
    assert fig.axes[0].get_shared_x_axes().joined(fig.axes[0], fig.axes[1])
    _check_png(fig, tmp_path)
    with pytest.raises(TypeError, match="HeadRecorder"):
        plot_head_trajectories({"a": 1})
    with pytest.raises(ValueError, match="unknown group"):
        plot_head_trajectories(plain, "nope")


def test_diversity_history_one_line_per_run(bert, tmp_path):
    model, ids, _ = bert
    div = head_diversity(model, lambda: model(ids))
    shifted = {"param_cos_q": 0.5, "map_js": 0.1}
    fig = plot_diversity_history({"a": [(0, div), (10, div)], "b": [(0, shifted), (5, shifted)]},
                                 keys=("param_cos_q", "map_js"))
    q_ax, js_ax = fig.axes
    assert [line.get_label() for line in q_ax.lines] == ["a", "b"]
    mean_q = np.mean([d.summary()["param_cos_q"] for d in div.values()])
    np.testing.assert_allclose(q_ax.lines[0].get_ydata(), [mean_q, mean_q], rtol=1e-6)
    np.testing.assert_allclose(q_ax.lines[1].get_ydata(), [0.5, 0.5])
    np.testing.assert_array_equal(js_ax.lines[1].get_xdata(), [0, 5])
    _check_png(fig, tmp_path)
    one = plot_diversity_history([(0, div)], keys=["lin"], layer=1)
    assert one.axes[0].lines[0].get_ydata()[0] == pytest.approx(div["encoder.layer.1.attention"].summary()["lin"])
    with pytest.raises(ValueError, match="expected layer"):
        plot_diversity_history([(0, div)], layer=7)
    with pytest.raises(ValueError, match="non-empty"):
        plot_diversity_history({"a": []})
