"""Keep snapshots of the head particles during training and project them by PCA.

::

    rec = HeadRecorder(heads, every=10)          # heads: RepulsiveHeads, HeadParticles or a model
    handle = rec.attach(optimizer)               # or call rec.record() yourself
    ...
    rec.plot("encoder.layers.0.self_attn:q")     # PCA trajectories of the M heads (attention_adapter.plotting)

Each snapshot stores, per group, a CPU ``float32`` copy of the ``(M, P)`` particle matrix, so the
memory is ``4 M P`` bytes per group per snapshot: restrict ``groups`` and raise ``every`` for big
models (BERT-base: 12 x 768 x 64 x 4 B ≈ 2.4 MB per group and snapshot).

With ``circuits=True`` (off by default: it is the dearest part of a snapshot) each snapshot also
stores, per attention module of the kept groups, the ``(M, M)`` float64 Gram matrices of its heads' QK and OV circuits
(:func:`attention_adapter.spaces.module_circuits`, :func:`attention_adapter.spaces.circuit_gram`), formed
from the module's current weights whatever the groups hold (a group of Q rows alone has no circuit):
``16 M^2`` bytes per module and snapshot, and ``O(M^2 d_head^2 (a + b))`` operations per circuit
(``a``, ``b`` its factors' row counts, about ``d_model``), done in float64 where the weights are.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from particlesampling import validation

from ._compat import warn_renamed
from .diversity import mean_offdiagonal, pairwise_cosine
from .particles import HeadParticles, head_particles_of
from .pca import principal_coordinates
from .spaces import circuit_gram, gram_cosine, module_circuits

__all__ = ["HeadRecorder", "principal_coordinates"]


def _heads_of(obj: Any) -> HeadParticles:
    found = head_particles_of(obj)
    if found is not None:
        return found
    if isinstance(obj, nn.Module):
        return HeadParticles(obj, skip_frozen=False)
    raise TypeError(f"expected RepulsiveHeads, HeadParticles or an nn.Module, received {type(obj).__name__}")


class HeadRecorder:
    """Snapshots of head particles over training.

    Parameters
    ----------
    heads : RepulsiveHeads, HeadParticles or nn.Module
    every : int
        With :meth:`attach`, record after every ``every``-th optimizer step (the first step included).
    groups : str or sequence of str, optional
        Group names to keep (default all); at least one.
    max_snapshots : int, optional
        Keep only the most recent snapshots.
    circuits : bool
        Also record the QK/OV circuit Grams of the kept groups' attention modules, which
        ``similarity(group, "circuits")`` needs (default False: module docstring, memory and cost).

    Attributes
    ----------
    head_particles : HeadParticles
        Where the snapshots are read (``heads`` is its deprecated alias).
    steps : list of int
        The step label of each kept snapshot.
    """

    def __init__(self, heads: Any, *, every: int = 1, groups: Optional[Sequence[str]] = None,
                 max_snapshots: Optional[int] = None, circuits: bool = False):
        self.head_particles = _heads_of(heads)
        every = validation.check_int("every", every, minimum=1)
        max_snapshots = validation.check_int("max_snapshots", max_snapshots, minimum=1, optional=True)
        names = self.head_particles.names
        if groups is None:
            self._groups = list(self.head_particles.groups)
        else:
            if isinstance(groups, str):
                groups = [groups]
            groups = list(groups)
            if not groups:
                raise ValueError(f"expected groups as None (all) or a non-empty sequence of names among {names}, "
                                 "received an empty sequence")
            unknown = [g for g in groups if g not in names]
            if unknown:
                raise ValueError(f"unknown group(s) {unknown}; expected names among {names}")
            self._groups = [g for g in self.head_particles.groups if g.name in set(groups)]
        self.every = every
        self.max_snapshots = max_snapshots
        self.steps: List[int] = []
        self._snaps: Dict[str, List[torch.Tensor]] = {g.name: [] for g in self._groups}
        # per module of the kept groups: {"qk"/"ov": CircuitStructure}, or why no circuit can be formed
        self._circuits: Optional[Dict[str, Any]] = None
        self._circuit_snaps: Dict[str, List[Dict[str, torch.Tensor]]] = {}
        if validation.check_bool("circuits", circuits):
            self._circuits = {}
            for g in self._groups:
                if g.site.name not in self._circuits:
                    try:
                        self._circuits[g.site.name] = module_circuits(g.site, self.head_particles.include_bias)
                    except ValueError as err:
                        self._circuits[g.site.name] = str(err)
                    self._circuit_snaps[g.site.name] = []
        self._count = 0  # optimizer steps seen by the attach() hook
        self._recorded = 0  # snapshots recorded so far (the default step label)

    @property
    def heads(self) -> HeadParticles:
        """Deprecated alias of :attr:`head_particles`."""
        warn_renamed("HeadRecorder.heads", "HeadRecorder.head_particles")
        return self.head_particles

    @property
    def group_names(self) -> List[str]:
        return [g.name for g in self._groups]

    def __len__(self) -> int:
        return len(self.steps)

    @torch.no_grad()
    def record(self, step: Optional[int] = None) -> None:
        """Store the current particles of every kept group.

        ``step`` labels the snapshot; it defaults to a running count, the number of snapshots this
        recorder has recorded before (0, 1, 2, ... when called by hand; :meth:`attach` passes the
        optimizer step instead).
        """
        label = self._recorded if step is None else int(step)
        # everything is formed before anything is stored, so a failure (out of memory, say) leaves the
        # snapshots, their circuits and their step labels aligned
        snaps = {g.name: g.gather("data").to("cpu", torch.float32, copy=True) for g in self._groups}
        grams = {site: ({} if isinstance(structures, str) else
                        {side: circuit_gram(st, st.group.gather("data")).cpu() for side, st in structures.items()})
                 for site, structures in (self._circuits or {}).items()}
        self.steps.append(label)
        self._recorded += 1
        for name, snap in snaps.items():
            self._snaps[name].append(snap)
        for site, gram in grams.items():
            self._circuit_snaps[site].append(gram)
        if self.max_snapshots is not None and len(self.steps) > self.max_snapshots:
            self.steps.pop(0)
            for v in (*self._snaps.values(), *self._circuit_snaps.values()):
                v.pop(0)

    def attach(self, optimizer: torch.optim.Optimizer):
        """Record after every ``every``-th ``optimizer.step()``; returns a removable handle."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"expected a torch.optim.Optimizer, received {type(optimizer).__name__}")

        def _hook(opt, args, kwargs):
            if self._count % self.every == 0:
                self.record(self._count)
            self._count += 1

        return optimizer.register_step_post_hook(_hook)

    def _name(self, group: Optional[str]) -> str:
        if group is None:
            return self._groups[0].name
        if group not in self._snaps:
            raise ValueError(f"unknown group {group!r}; expected one of {self.group_names}")
        return group

    def snapshots(self, group: Optional[str] = None) -> torch.Tensor:
        """``(T, M, P)`` tensor of the recorded particles of ``group`` (default: the first group)."""
        name = self._name(group)
        if not self._snaps[name]:
            raise ValueError("no snapshot recorded yet; call record() or attach(optimizer) first")
        return torch.stack(self._snaps[name])

    def similarity(self, group: Optional[str] = None, space: str = "weights") -> torch.Tensor:
        """``(T, M, M)``: the heads' cosine similarity in each snapshot of ``group``, in ``space``.

        ``"weights"``: of the recorded particle rows of ``group``.

        ``"circuits"``: of the heads' QK/OV circuits (Elhage et al. 2021) of ``group``'s attention
        module, recorded with each snapshot from the module's weights (``circuits=True``), whatever the
        group holds: keyed per module, the group's roles choose the circuits, as ``roles`` does in circuit
        space: a group of Q and/or K rows (``"q"``, ``"k"``, ``"qk-circuit"``) gives the QK circuits
        ``W_q^T W_k``; of V and/or the output columns (``"v"``, ``"out"``, ``"ov-circuit"``) the OV
        circuits ``W_o W_v``; of both (``"qkv"``, ``"circuits"``, function-space groups) the joint
        particle, inner products summed over both circuits
        (:func:`attention_adapter.spaces.circuit_gram`). So the groups ``"q"`` and ``"k"`` of a module
        give the same matrix. Biases are in the circuits with the selection's ``include_bias``. Under
        grouped-query attention the particles are the key/value heads with their query heads (``M`` is
        their number, ``G``); under multi-query attention the query heads, the shared key/value head a
        constant factor. A module with only Q (Lin et al.'s hops) compares those rows: circuits and
        weights coincide there.

        ``"outputs"`` is refused: a snapshot holds weights only (and ``RepulsiveHeads(space="outputs")``
        keeps the kernel of each step's features, not the features), so the outputs' similarity needs a
        forward pass on a batch: :func:`attention_adapter.head_diversity` with ``forward=``.
        """
        if space == "weights":
            return torch.stack([pairwise_cosine(s) for s in self.snapshots(group)])
        if space == "circuits":
            return torch.stack([gram_cosine(g) for g in self._circuit_grams(group)])
        if space == "outputs":
            raise ValueError(
                "HeadRecorder snapshots hold the heads' weights, not their outputs (RepulsiveHeads(space='outputs') "
                "keeps only the kernel of each step's features, not the features): the outputs' similarity needs a "
                "forward pass on a batch, head_diversity(model, forward=lambda: model(batch))[module].output_cosine; "
                "or use space 'weights' or 'circuits' here")
        raise ValueError(f"expected space 'weights' or 'circuits' for recorded snapshots, received {space!r}")

    def _circuit_grams(self, group: Optional[str]) -> List[torch.Tensor]:
        """Per snapshot, the ``(M, M)`` float64 circuit Gram of ``group``'s module for its roles
        (:meth:`similarity`)."""
        name = self._name(group)
        if not self.steps:
            raise ValueError("no snapshot recorded yet; call record() or attach(optimizer) first")
        if self._circuits is None:
            raise ValueError("this recorder was made with circuits=False, so its snapshots hold no circuits; "
                             "make it with HeadRecorder(..., circuits=True)")
        g = next(g for g in self._groups if g.name == name)
        structures = self._circuits[g.site.name]
        if isinstance(structures, str):
            raise ValueError(f"no circuits for attention module {g.site.name!r}: {structures}")
        roles = set(g.roles)
        sides = [side for side, members in (("qk", {"q", "k", "q_bias", "k_bias"}), ("ov", {"v", "out", "v_bias"}))
                 if roles & members]
        missing = [side for side in sides if side not in structures]
        if missing or not sides:
            raise ValueError(f"group {name!r} (roles {g.roles}) asks for the {'/'.join(missing or ['no'])} "
                             f"circuit(s) of module {g.site.name!r}, which has {sorted(structures) or 'none'}")
        return [sum(snap[side] for side in sides) for snap in self._circuit_snaps[g.site.name]]

    def mean_similarity(self, group: Optional[str] = None, space: str = "weights") -> torch.Tensor:
        """``(T,)``: mean off-diagonal entry of :meth:`similarity` per snapshot."""
        return torch.stack([mean_offdiagonal(s) for s in self.similarity(group, space)])

    def pca(self, group: Optional[str] = None, k: int = 2) -> Tuple[torch.Tensor, torch.Tensor]:
        """Project all snapshots of ``group`` on their first ``k`` principal components (fit jointly).

        Returns
        -------
        coords : (T, M, k) tensor
        explained : (k,) tensor, fraction of the variance explained by each component
        """
        coords, explained = principal_coordinates([self.snapshots(group)], k)
        return coords[0], explained

    def plot(self, group: Optional[str] = None, ax=None):
        """Trajectories of the heads in the plane of the first two principal components.

        The picture of :func:`attention_adapter.plotting.plot_head_trajectories` (matplotlib imported
        lazily). Returns the ``Axes``.
        """
        from .plotting import plot_head_trajectories

        name = self._name(group)
        if ax is None:
            fig = plot_head_trajectories(self, name)
            return fig.axes[0]
        plot_head_trajectories(self, name, axes=[ax])
        return ax
