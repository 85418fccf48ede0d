"""Pictures of attention heads, each one call from a model, a recorder or the diversity metrics.

* :func:`plot_head_similarity`: heatmaps of the ``M x M`` head similarity of every attention layer
  (parameter or output cosine, or the Jensen-Shannon divergence of the attention maps), one row per
  model state (e.g. before and after training);
* :func:`plot_head_trajectories`: the heads of one group over training, projected on the principal
  components of all snapshots (several runs share one basis, so they can be compared);
* :func:`plot_attention_maps`: a grid of the attention maps of every head of one layer for one input
  sentence, with its tokens;
* :func:`plot_diversity_history`: diversity metrics against the training step, one line per run.

The numbers are those of :mod:`attention_adapter.diversity`, :class:`~attention_adapter.HeadCapture`
and :class:`~attention_adapter.HeadRecorder`; this module only draws. matplotlib is imported on first
use; every function returns the ``Figure`` and never calls ``plt.show()``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from particlesampling import validation

from .capture import HeadCapture
from .discovery import find_attention
from .diversity import LayerDiversity, head_diversity, mean_offdiagonal
from .particles import head_particles_of
from .pca import principal_coordinates

__all__ = ["plot_head_similarity", "plot_head_trajectories", "plot_attention_maps", "plot_diversity_history",
           "SIMILARITY_KINDS", "DIVERSITY_LABELS"]

#: what :func:`plot_head_similarity` can show: kind -> (title, colour map, colour range)
SIMILARITY_KINDS = {
    "parameter": ("cosine similarity of head parameters", "RdBu_r", (-1.0, 1.0)),
    "output": ("cosine similarity of head outputs", "RdBu_r", (-1.0, 1.0)),
    "map": ("Jensen-Shannon divergence of attention maps (nats)", "viridis", (0.0, math.log(2.0))),
}

#: panel titles of the keys of :meth:`LayerDiversity.summary`
DIVERSITY_LABELS = {
    "param_cos_q": "cosine of q parameters",
    "param_cos_k": "cosine of k parameters",
    "param_cos_v": "cosine of v parameters",
    "output_cos": "cosine of head outputs",
    "map_js": "JS divergence of maps",
    "lin": "Lin et al. redundancy",
}


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("attention_adapter.plotting needs matplotlib: pip install matplotlib") from exc
    return plt


def _root_figure(ax: Any):
    """The top-level Figure of ``ax`` (also inside a sub-figure)."""
    fig = ax.figure
    while getattr(fig, "figure", fig) is not fig:
        fig = fig.figure
    return fig


def short_names(names: Sequence[str]) -> Dict[str, str]:
    """Labels for module names: the dotted components they all share at the start and end dropped.

    ``["encoder.layer.0.attention", "encoder.layer.1.attention"]`` -> ``{...: "0", ...: "1"}``.
    """
    parts = [n.split(".") for n in names]
    if len(parts) < 2:
        return {n: n.split(".")[-1] if n else "(model)" for n in names}
    start = 0
    while all(len(p) > start + 1 and p[start] == parts[0][start] for p in parts):
        start += 1
    end = 0
    while all(len(p) - end - 1 > start and p[-1 - end] == parts[0][-1 - end] for p in parts):
        end += 1
    return {n: ".".join(p[start:len(p) - end]) or n for n, p in zip(names, parts)}


def _sites_of(source: Any):
    particles = head_particles_of(source)
    if particles is not None:
        return particles.sites
    if isinstance(source, nn.Module):
        return find_attention(source)
    raise TypeError(f"expected an nn.Module, HeadParticles or RepulsiveHeads, received {type(source).__name__}")


def _is_diversity(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, LayerDiversity) for v in obj.values())


def _diversity_rows(source: Any, forward: Optional[Callable[[], Any]], mask: Optional[torch.Tensor]):
    """``[(row label, {module name: LayerDiversity})]`` from a model, a diversity dict or a mapping of them."""
    if _is_diversity(source):
        return [("", source)]
    if isinstance(source, Mapping) and source and all(_is_diversity(v) for v in source.values()):
        return [(str(k), v) for k, v in source.items()]
    if isinstance(source, nn.Module) or head_particles_of(source) is not None:
        return [("", head_diversity(source, forward, mask=mask))]
    raise TypeError("expected head_diversity(...)'s dict, a mapping label -> such dicts, or a model "
                    f"(nn.Module, HeadParticles, RepulsiveHeads), received {type(source).__name__}")


def _matrix(div: LayerDiversity, kind: str, group: Optional[str], name: str) -> torch.Tensor:
    if kind == "parameter":
        label = group if group is not None else next(iter(div.parameter_cosine))
        if label not in div.parameter_cosine:
            raise ValueError(f"expected group among {sorted(div.parameter_cosine)} for {name!r}, received {label!r}")
        return div.parameter_cosine[label]
    mat = div.output_cosine if kind == "output" else div.map_distance
    if mat is None:
        raise ValueError(f"{name!r} has no {kind} matrix: pass forward= (a forward pass) to head_diversity "
                         "or to this function, with eager attention for the maps")
    return mat


def plot_head_similarity(source: Any, forward: Optional[Callable[[], Any]] = None, *, kind: str = "parameter",
                         group: Optional[str] = None, mask: Optional[torch.Tensor] = None,
                         title: Optional[str] = None):
    """Heatmaps of head similarity, one per attention layer, one row per model state.

    Parameters
    ----------
    source : dict, mapping or model
        The dict ``head_diversity(...)`` returns (one row); a mapping ``label -> such dict`` (one row
        each, e.g. ``{"pretrained": d0, "after training": d1}``); or a model (``nn.Module``,
        ``HeadParticles``, ``RepulsiveHeads``), measured here with ``forward`` and ``mask``.
    forward : callable, optional
        ``forward()`` runs the model on a batch (needed for ``"output"`` and ``"map"``).
    kind : {"parameter", "output", "map"}
        Cosine similarity of the heads' parameters (group ``group``, default the first: ``"q"``) or
        outputs, or the Jensen-Shannon divergence (nats) of their attention maps.
    group : str, optional
        Parameter group label (``"q"``, ``"k"``, ``"v"``, ``"qkv"``) for ``kind="parameter"``.
    mask : (B, T) tensor, optional
        Valid query positions for the maps.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure with ``rows x layers`` heatmaps (each ``M x M``; panel titles give the
    mean off-diagonal value) and one colour bar.
    """
    if kind not in SIMILARITY_KINDS:
        raise ValueError(f"expected kind among {sorted(SIMILARITY_KINDS)}, received {kind!r}")
    rows = _diversity_rows(source, forward, mask)
    names = list(rows[0][1])
    for label, div in rows:
        if list(div) != names:
            raise ValueError(f"expected the same attention modules in every row, received {list(div)} and {names}")
    labels = short_names(names)
    heading, cmap, (vmin, vmax) = SIMILARITY_KINDS[kind]
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), len(names), figsize=(1.9 * len(names) + 1.2, 2.0 * len(rows) + 0.7),
                             squeeze=False, layout="constrained")
    image = None
    for r, (row_label, div) in enumerate(rows):
        for c, name in enumerate(names):
            mat = _matrix(div[name], kind, group, name).detach().float().cpu()
            ax = axes[r][c]
            image = ax.imshow(mat.numpy(), cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            label = f"layer {labels[name]}" if labels[name].isdigit() else labels[name]
            ax.set_title(f"{label}: {float(mean_offdiagonal(mat)):.2f}", fontsize=9)
            if c == 0 and row_label:
                ax.set_ylabel(row_label)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    fig.suptitle(title if title is not None else f"{heading} (layer: mean over pairs)", fontsize=10)
    return fig


def _is_recorder(obj: Any) -> bool:
    # what plotting reads of a HeadRecorder (duck-typed: the recorder imports this module to draw itself)
    return callable(getattr(obj, "snapshots", None)) and isinstance(getattr(obj, "steps", None), list)


def _recorders(recorders: Any) -> Dict[str, Any]:
    if _is_recorder(recorders):
        return {"": recorders}
    if isinstance(recorders, Mapping) and recorders and all(_is_recorder(r) for r in recorders.values()):
        return {str(k): v for k, v in recorders.items()}
    raise TypeError(f"expected a HeadRecorder or a non-empty mapping label -> HeadRecorder, received "
                    f"{type(recorders).__name__}")


def plot_head_trajectories(recorders: Any, group: Optional[str] = None, *, relative: bool = False,
                           axes: Optional[Sequence[Any]] = None, title: Optional[str] = None):
    """Each head's path over training in the plane of the first two principal components.

    Parameters
    ----------
    recorders : HeadRecorder or mapping label -> HeadRecorder
        Several runs (e.g. ``{"AdamW": r0, "AdamW + RepulsiveHeads": r1}``) are projected on one basis
        fitted to all their snapshots, and drawn side by side with shared axes.
    group : str, optional
        Group name (default: the first recorder's first group); every recorder must have it.
    relative : bool
        Draw each head's displacement from its first snapshot (every path starts at the origin).
        Heads that are far apart, as in a pretrained model, otherwise fill the principal plane with
        their differences, and their motion during a short run is too small to see.
    axes : sequence of matplotlib Axes, optional
        One per recorder; a new figure otherwise.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure. One line per head (``o`` start, ``*`` end).
    """
    recs = _recorders(recorders)
    first = next(iter(recs.values()))
    name = group if group is not None else first.group_names[0]
    snaps = [r.snapshots(name) for r in recs.values()]
    if relative:
        snaps = [s - s[:1] for s in snaps]
    coords, explained = principal_coordinates(snaps, k=2)
    if relative:  # the zero displacement at the origin (a translation of the plane)
        coords = [xy - xy[:1] for xy in coords]
    if axes is None:
        fig, row = _pyplot().subplots(1, len(recs), figsize=(4.6 * len(recs), 4.0), squeeze=False,
                                      sharex=True, sharey=True, layout="constrained")
        axes = list(row[0])
    else:
        axes = list(axes)
        if len(axes) != len(recs):
            raise ValueError(f"expected {len(recs)} axes (one per recorder), received {len(axes)}")
        fig = _root_figure(axes[0])
    for ax, (label, rec), xy in zip(axes, recs.items(), coords):
        for h in range(xy.shape[1]):
            line = ax.plot(xy[:, h, 0].numpy(), xy[:, h, 1].numpy(), lw=1, alpha=0.8)[0]
            ax.scatter(float(xy[0, h, 0]), float(xy[0, h, 1]), marker="o", s=12, color=line.get_color())
            ax.scatter(float(xy[-1, h, 0]), float(xy[-1, h, 1]), marker="*", s=40, color=line.get_color())
        moved = "displacement, " if relative else ""
        ax.set_xlabel(f"{moved}PC1 ({100 * float(explained[0]):.0f}%)")
        ax.set_ylabel(f"{moved}PC2 ({100 * float(explained[1]):.0f}%)")
        what = f"{label}: " if label else f"{name}: "
        ax.set_title(f"{what}heads over {len(rec.steps)} snapshots (o start, * end)", fontsize=9)
    if title is not None:
        fig.suptitle(title)
    return fig


def _captured_maps(source: Any, forward: Optional[Callable[[], Any]]) -> Dict[str, torch.Tensor]:
    if isinstance(source, HeadCapture):
        maps = source.maps
    elif isinstance(source, Mapping):
        maps = dict(source)
    else:
        sites = _sites_of(source)
        if forward is None:
            raise TypeError("expected forward= (e.g. lambda: model(**batch)) to capture the attention maps of a model")
        maps = HeadCapture(sites).run(forward).maps
    if not maps:
        raise ValueError("no attention maps were captured; Hugging Face models need attn_implementation='eager'")
    for name, m in maps.items():
        if not isinstance(m, torch.Tensor) or m.dim() != 4:
            raise ValueError(f"expected attention maps of shape (B, M, T, S) for {name!r}, received "
                             f"{tuple(getattr(m, 'shape', ()))}")
    return maps


def plot_attention_maps(source: Any, forward: Optional[Callable[[], Any]] = None, *, layer: Any = 0, index: int = 0,
                        tokens: Optional[Sequence[str]] = None, heads: Optional[Sequence[int]] = None,
                        cols: int = 6, title: Optional[str] = None):
    """The attention map of every head of one layer for one input, in a grid.

    Parameters
    ----------
    source : model, HeadCapture or mapping
        A model (``nn.Module``, ``HeadParticles``, ``RepulsiveHeads``), run once with ``forward``
        under a :class:`HeadCapture`; a HeadCapture that has run; or ``{module name: (B, M, T, S)
        tensor}``.
    forward : callable, optional
        ``forward()`` runs the model (e.g. ``lambda: model(**batch)``); put the model in ``eval()``
        mode first. Hugging Face models need ``attn_implementation="eager"``.
    layer : int or str
        Attention module: its name, or its position among the captured ones (negative from the end).
    index : int
        Which input of the batch.
    tokens : sequence of str, optional
        The input's tokens: axis labels, and the map is cut to ``len(tokens)`` positions (padding off).
    heads : sequence of int, optional
        Heads to draw (default all ``M``).
    cols : int
        Panels per row.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure; panel ``h`` shows ``A[h, query, key]`` (rows: queries, columns: keys).
    """
    maps = _captured_maps(source, forward)
    names = list(maps)
    if isinstance(layer, str):
        if layer not in maps:
            raise ValueError(f"expected layer among {names}, received {layer!r}")
        name = layer
    elif isinstance(layer, int) and not isinstance(layer, bool) and -len(names) <= layer < len(names):
        name = names[layer]
    else:
        raise ValueError(f"expected layer as a module name or an index in [-{len(names)}, {len(names)}), "
                         f"received {layer!r}")
    batch = maps[name]
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < batch.shape[0]:
        raise ValueError(f"expected index in [0, {batch.shape[0]}), received {index!r}")
    att = batch[index].detach().float().cpu()  # (M, T, S)
    if tokens is not None:
        tokens = [str(t) for t in tokens]
        if not 1 <= len(tokens) <= att.shape[1]:
            raise ValueError(f"expected at most {att.shape[1]} tokens (the map's query length), received {len(tokens)}")
        att = att[:, :len(tokens), :len(tokens)] if att.shape[1] == att.shape[2] else att[:, :len(tokens)]
    chosen = list(range(att.shape[0])) if heads is None else [int(h) for h in heads]
    if not chosen or not all(0 <= h < att.shape[0] for h in chosen):
        raise ValueError(f"expected heads as indices in [0, {att.shape[0]}), received {heads!r}")
    cols = validation.check_int("cols", cols, minimum=1)
    ncols = min(cols, len(chosen))
    nrows = -(-len(chosen) // ncols)
    side = 2.1 if tokens is None or len(tokens) <= 12 else 2.6
    fig, axes = _pyplot().subplots(nrows, ncols, figsize=(side * ncols + 0.4, side * nrows + 0.6), squeeze=False,
                                   layout="constrained")
    labelled = tokens is not None and len(tokens) <= 40
    for k, ax in enumerate(axes.ravel()):
        if k >= len(chosen):
            ax.axis("off")
            continue
        h = chosen[k]
        ax.imshow(att[h].numpy(), cmap="viridis", vmin=0.0, aspect="auto")
        ax.set_title(f"head {h}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if labelled and k // ncols == nrows - 1 and att.shape[2] == len(tokens):
            ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
        if labelled and k % ncols == 0:
            ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
    fig.suptitle(title if title is not None else f"{name}: attention of each head (rows: queries, columns: keys)",
                 fontsize=10)
    return fig


def _summary_value(entry: Any, key: str, layer: Any) -> float:
    """One number of a history entry: a diversity dict (mean over layers, or one layer) or a summary dict."""
    if _is_diversity(entry):
        names = list(entry)
        if layer is not None:
            valid = isinstance(layer, str) and layer in entry or (
                isinstance(layer, int) and not isinstance(layer, bool) and -len(names) <= layer < len(names))
            if not valid:
                raise ValueError(f"expected layer among {names} or an index into them, received {layer!r}")
            name = layer if isinstance(layer, str) else names[layer]
            summary = entry[name].summary()
            return summary.get(key, math.nan)
        values = [d.summary().get(key, math.nan) for d in entry.values()]
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan
    if isinstance(entry, Mapping):
        return float(entry.get(key, math.nan))
    raise TypeError(f"expected head_diversity(...)'s dict or a summary dict, received {type(entry).__name__}")


def plot_diversity_history(runs: Any, *, keys: Sequence[str] = ("param_cos_q", "output_cos", "map_js"),
                           layer: Any = None, title: Optional[str] = None):
    """Head-diversity metrics against the training step, one line per run.

    Parameters
    ----------
    runs : sequence or mapping label -> sequence
        Each sequence holds ``(step, diversity)`` pairs, ``diversity`` being the dict
        ``head_diversity(...)`` returns (averaged over the layers, or the layer ``layer``) or a dict
        of numbers such as ``LayerDiversity.summary()``.
    keys : sequence of str
        Keys of :meth:`LayerDiversity.summary`, one panel each.
    layer : int or str, optional
        One attention module (name or position) instead of the mean over layers.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    if isinstance(runs, Mapping):
        named: List[Tuple[str, Any]] = [(str(k), v) for k, v in runs.items()]
    else:
        named = [("", runs)]
    if not named or any(not isinstance(h, Sequence) or not h for _, h in named):
        raise ValueError("expected non-empty sequences of (step, diversity) pairs")
    if isinstance(keys, str) or not keys:
        raise ValueError(f"expected keys as a non-empty sequence of summary names, received {keys!r}")
    fig, row = _pyplot().subplots(1, len(keys), figsize=(3.6 * len(keys), 3.0), squeeze=False, layout="constrained")
    for ax, key in zip(row[0], keys):
        for i, (label, history) in enumerate(named):
            steps = [int(s) for s, _ in history]
            values = [_summary_value(d, key, layer) for _, d in history]
            ax.plot(steps, values, marker="o", ms=3, color=f"C{i}", label=label or None)
        ax.set_title(DIVERSITY_LABELS.get(key, key), fontsize=10)
        ax.set_xlabel("step")
    if any(label for label, _ in named):
        row[0][0].legend(fontsize=8)
    if title is not None:
        fig.suptitle(title)
    return fig
