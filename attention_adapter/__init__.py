"""attention_adapter: the heads of multi-head attention as SVGD/SPOS particles in PyTorch training.

Repulsive attention (An et al., "Repulsive Attention: Rethinking Multi-head Attention as Bayesian
Inference", EMNLP 2020): the ``M`` heads of an attention layer are ``M`` particles; their gradients
are replaced by the Stein variational (SVGD) or SPOS direction, computed by the core
:mod:`particlesampling`, so that heads repel each other during ordinary training. See
``docs/attention_adapter.md``.

Five lines turn a training loop repulsive::

    from attention_adapter import An2020, RepulsiveHeads
    heads = RepulsiveHeads(model, preset=An2020(alpha=0.01, epsilon=0.01))   # the paper's symbols
    ...
    loss.backward()
    heads.apply()          # before clipping and optimizer.step()
    optimizer.step()

or, for heads that sample a stated posterior (core names: ``step_size``, ``repulsion``, ``beta``)::

    heads = RepulsiveHeads(model, "spos", step_size=1.0, repulsion=1.0, beta=1.0,
                           posterior=Posterior(dataset_size=len(train_set), prior=1.0),
                           selection=HeadSelection(particles="joint", layers=[-2, -1]))

The update rule of one group is the pure function :func:`head_update` (:mod:`attention_adapter.update`).
With ``transformers.Trainer``: :class:`RepulsiveHeadsCallback` (:mod:`attention_adapter.hf_trainer`).
Pictures of the heads (similarity heatmaps, PCA trajectories, attention maps, diversity over training):
:mod:`attention_adapter.plotting` (matplotlib imported on first use).
"""

from .capture import HeadCapture
from .discovery import describe_attention, find_attention, select_layers, unresolved_attention, unwrap_model
from .diversity import (
    LayerDiversity,
    attention_map_distance,
    head_diversity,
    head_output_similarity,
    lin_redundancy,
    mean_offdiagonal,
    pairwise_cosine,
    parameter_similarity,
)
from .layouts import HeadLayout, ResolvedLayout, TensorBlock
from .noise import step_seed
from .particles import HeadParticles, HeadSelection, ParticleGroup
from .penalty import HeadRepulsionPenalty, head_kernel_similarity
from .plotting import plot_attention_maps, plot_diversity_history, plot_head_similarity, plot_head_trajectories
from .recorder import HeadRecorder
from .repulsive import PRESETS, ApplyInfo, NonFiniteGradientError, RepulsiveHeads
from .update import UPDATE_RULES, An2020, Posterior, UpdateSettings, head_update

__all__ = [
    "RepulsiveHeads",
    "An2020",
    "Posterior",
    "HeadSelection",
    "UpdateSettings",
    "head_update",
    "UPDATE_RULES",
    "PRESETS",
    "ApplyInfo",
    "NonFiniteGradientError",
    "HeadLayout",
    "TensorBlock",
    "ResolvedLayout",
    "find_attention",
    "select_layers",
    "describe_attention",
    "unresolved_attention",
    "unwrap_model",
    "HeadParticles",
    "ParticleGroup",
    "HeadRepulsionPenalty",
    "head_kernel_similarity",
    "HeadCapture",
    "head_diversity",
    "LayerDiversity",
    "pairwise_cosine",
    "mean_offdiagonal",
    "head_output_similarity",
    "attention_map_distance",
    "lin_redundancy",
    "parameter_similarity",
    "HeadRecorder",
    "plot_head_similarity",
    "plot_head_trajectories",
    "plot_attention_maps",
    "plot_diversity_history",
    "step_seed",
    "RepulsiveHeadsCallback",
]


def __getattr__(name):
    # RepulsiveHeadsCallback subclasses transformers.TrainerCallback: imported on first use, so that
    # attention_adapter itself does not need transformers
    if name == "RepulsiveHeadsCallback":
        from .hf_trainer import RepulsiveHeadsCallback

        return RepulsiveHeadsCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
