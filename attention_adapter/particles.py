"""Particle systems: which head blocks form one particle, for every selected attention module.

A :class:`ParticleGroup` is one system of ``M`` particles (the ``M`` heads of one attention module,
for one choice of roles). Its particle ``h`` is the concatenation, in a fixed order, of head ``h``'s
blocks of the chosen tensors, so a group gathers to an ``(M, P)`` matrix and scatters back.

Particle choices (:class:`HeadParticles`):

* ``particles="separate"`` (the paper's default): Q, K and V are three systems per module, head
  ``h``'s particle being its rows of ``W_q`` (resp. ``W_k``, ``W_v``); ``include_bias`` appends
  that role's per-head bias, ``include_output`` adds the output-projection columns as a fourth
  system.
* ``particles="joint"``: one system per module, head ``h``'s particle being
  ``q_h || k_h || v_h`` (``|| o_h`` with ``include_output``, then the per-head biases with
  ``include_bias``).

Grouped-query / multi-query attention (``M`` query heads, ``G < M`` key/value heads, ``r = M / G``;
Ainslie et al. 2023, Shazeer 2019): with ``"separate"``, Q (and the output projection) is a system
of ``M`` particles and K, V are systems of ``G`` particles. With ``"joint"`` a particle is one
key/value head with its query group: particle ``g`` (of ``G``) is
``q_{g r} || ... || q_{g r + r - 1} || k_g || v_g`` (then ``o`` and the biases likewise), since query
head ``h`` attends with key/value head ``h // r`` (Hugging Face ``repeat_kv``). A system of a
single particle (``G = 1``, multi-query) has nothing to repel; such groups are skipped and listed
in :attr:`HeadParticles.skipped`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from particlesampling import validation

from .discovery import find_attention, select_layers
from .layouts import ResolvedBlock, ResolvedLayout
from .sharding import FullTensors

__all__ = ["ParticleGroup", "HeadParticles", "HeadSelection", "PARTICLE_CHOICES"]

PARTICLE_CHOICES = ("separate", "joint")
_BIAS_OF = {"q": "q_bias", "k": "k_bias", "v": "v_bias"}


@dataclass(frozen=True, eq=False)
class ParticleGroup:
    """``M`` head particles made of the same blocks of one attention module.

    Attributes
    ----------
    name : str
        ``"<module name>:<roles>"``, e.g. ``"encoder.layers.0.self_attn:q"``.
    site : ResolvedLayout
        The attention module the heads belong to.
    roles : tuple of str
        Roles concatenated into each particle, in order.
    blocks : tuple of ResolvedBlock
        The blocks, in the same order.
    """

    name: str
    site: ResolvedLayout
    roles: Tuple[str, ...]
    blocks: Tuple[ResolvedBlock, ...]

    @property
    def num_particles(self) -> int:
        """``M``, the number of particles: the blocks' head count (the key/value head count ``G``
        for a joint group of grouped-query attention, whose particles are query groups)."""
        return min(b.num_heads for b in self.blocks)

    def _widths(self) -> List[int]:
        m = self.num_particles
        return [b.numel_per_head * (b.num_heads // m) for b in self.blocks]

    @property
    def dim(self) -> int:
        """``P``, the length of one particle."""
        return sum(self._widths())

    @property
    def params(self) -> Tuple[nn.Parameter, ...]:
        """The distinct parameters the group touches."""
        seen: Dict[int, nn.Parameter] = {}
        for b in self.blocks:
            seen.setdefault(id(b.param), b.param)
        return tuple(seen.values())

    def gather(self, source: str = "data", full: Optional[FullTensors] = None) -> Optional[torch.Tensor]:
        """The ``(M, P)`` particle matrix.

        Parameters
        ----------
        source : {"data", "param", "grad"}
            ``"data"``: detached parameter values; ``"param"``: the parameters themselves
            (differentiable, for penalties); ``"grad"``: the ``.grad`` tensors (``None`` if any block's
            gradient is ``None``).
        full : FullTensors, optional
            Per-step cache of the full tensors of sharded (FSDP2 ``DTensor``) parameters, see
            :mod:`attention_adapter.sharding`; without it a sharded tensor is all-gathered per block.
        """
        parts = []
        for b in self.blocks:
            if full is not None:
                t = full.get(b.param, source, f"parameter {b.name!r} (group {self.name!r})")
                if t is None:
                    return None
            elif source == "data":
                t = b.param.detach()
            elif source == "param":
                t = b.param
            elif source == "grad":
                t = b.param.grad
                if t is None:
                    return None
            else:
                raise ValueError(f"expected source 'data', 'param' or 'grad', received {source!r}")
            g = b.gather(t)  # (heads of b, numel_per_head); r consecutive heads per particle when grouped
            parts.append(g if b.num_heads == self.num_particles else g.reshape(self.num_particles, -1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def scatter_grad(self, rows: torch.Tensor, full: Optional[FullTensors] = None) -> None:
        """Write an ``(M, P)`` matrix into the head positions of the parameters' ``.grad``.

        With ``full`` (:class:`~attention_adapter.sharding.FullTensors`), the rows of sharded
        parameters go into their full gradients; ``full.commit()`` then writes each rank's shard.
        """
        if tuple(rows.shape) != (self.num_particles, self.dim):
            raise ValueError(
                f"expected rows of shape {(self.num_particles, self.dim)} for group {self.name!r}, "
                f"received {tuple(rows.shape)}"
            )
        offset = 0
        for b, n in zip(self.blocks, self._widths()):
            target = b.param.grad if full is None else full.grad_target(b.param, f"parameter {b.name!r}")
            b.scatter(target, rows[:, offset:offset + n].reshape(b.num_heads, -1))
            offset += n

    def scatter(self, target: Mapping[int, torch.Tensor], rows: torch.Tensor) -> None:
        """Write ``rows`` (``M x P``) into ``target[id(param)]`` tensors (each of its parameter's shape)."""
        offset = 0
        for b, n in zip(self.blocks, self._widths()):
            b.scatter(target[id(b.param)], rows[:, offset:offset + n].reshape(b.num_heads, -1))
            offset += n


def _check_choice(particles, roles, include_output, include_bias) -> Tuple[str, ...]:
    validation.check_choice("particles", particles, PARTICLE_CHOICES)
    if isinstance(roles, str):
        roles = (roles,)
    roles = tuple(roles)
    bad = [r for r in roles if r not in ("q", "k", "v")]
    if not roles or bad:
        raise ValueError(f"expected roles as a non-empty subset of ('q', 'k', 'v'), received {roles!r}")
    if len(set(roles)) != len(roles):
        raise ValueError(f"expected distinct roles, received {roles!r}")
    validation.check_bool("include_output", include_output)
    validation.check_bool("include_bias", include_bias)
    return roles


@dataclass(frozen=True)
class HeadSelection:
    """Which attention modules, and which of their tensors, become head particles (immutable).

    Parameters
    ----------
    particles : {"separate", "joint"}
        Q, K, V as separate systems (default, as in An et al. 2020) or one joint particle per head.
    roles : sequence of {"q", "k", "v"}
        Which projections take part (default all three).
    include_output : bool
        Add the head's output-projection columns (a 4th system with ``"separate"``, appended to the
        joint particle with ``"joint"``).
    include_bias : bool
        Append each role's per-head bias to its particle.
    layouts : mapping, optional
        User layouts, see :func:`~attention_adapter.discovery.find_attention`.
    layers : optional
        Subset of the attention modules, see :func:`~attention_adapter.discovery.select_layers`.
    kinds : None, str or sequence of {"self", "cross", "decoder_self"}
        Keep only attention modules of these kinds (default all), see
        :func:`~attention_adapter.discovery.select_layers`.
    """

    particles: str = "separate"
    roles: Tuple[str, ...] = ("q", "k", "v")
    include_output: bool = False
    include_bias: bool = False
    layouts: Any = None
    layers: Any = None
    kinds: Any = None

    def __post_init__(self):
        object.__setattr__(self, "roles", _check_choice(self.particles, self.roles, self.include_output,
                                                        self.include_bias))

    def particle_choice(self) -> Dict[str, Any]:
        """``{"particles", "roles", "include_output", "include_bias"}``."""
        return dict(particles=self.particles, roles=self.roles, include_output=self.include_output,
                    include_bias=self.include_bias)

    def build(self, model: nn.Module, *, skip_frozen: bool = True) -> "HeadParticles":
        """The :class:`HeadParticles` of ``model`` for this selection."""
        return HeadParticles(model, **self.particle_choice(), layouts=self.layouts, layers=self.layers,
                             kinds=self.kinds, skip_frozen=skip_frozen)


def _groups_of_site(site: ResolvedLayout, particles: str, roles, include_output, include_bias):
    blocks = site.blocks
    present = [r for r in roles if r in blocks]
    if include_output and "out" not in blocks:
        raise ValueError(
            f"include_output=True but attention module {site.name!r} ({site.description}) declares no output projection"
        )
    if particles == "separate":
        specs = [(r, [r] + ([_BIAS_OF[r]] if include_bias and _BIAS_OF[r] in blocks else [])) for r in present]
        if include_output:
            specs.append(("out", ["out"]))
    else:
        members = list(present) + (["out"] if include_output else [])
        if include_bias:
            members += [_BIAS_OF[r] for r in present if _BIAS_OF[r] in blocks]
        label = "".join(present) + ("+out" if include_output else "") + ("+bias" if include_bias else "")
        specs = [(label, members)] if present else []
    return [
        ParticleGroup(f"{site.name}:{label}", site, tuple(m), tuple(blocks[r] for r in m)) for label, m in specs
    ]


def _overlaps(a: ResolvedBlock, b: ResolvedBlock) -> bool:
    if a.param is not b.param:
        return False
    if a.axis != b.axis:
        return True
    if a.start >= b.start + b.size or b.start >= a.start + a.size:
        return False
    if a.units is None and b.units is None:
        return True
    return bool((a.axis_mask() & b.axis_mask()).any())  # interleaved blocks share a range, not positions


class HeadParticles:
    """The particle systems of a model: discovery, layer selection and particle choice in one object.

    Parameters
    ----------
    model : nn.Module
    particles, roles, include_output, include_bias, layouts, layers, kinds :
        As the fields of :class:`HeadSelection` (which builds this object with ``build(model)``).
    skip_frozen : bool
        Groups with a parameter that has ``requires_grad=False`` are skipped, with one
        ``UserWarning`` for the whole model naming how many tensors were skipped (if false, they are
        kept, e.g. for diversity metrics).

    Raises
    ------
    ValueError
        No attention module found, no group left, or two groups claiming overlapping parts of one
        tensor.
    """

    def __init__(self, model: nn.Module, *, particles: str = "separate", roles: Sequence[str] = ("q", "k", "v"),
                 include_output: bool = False, include_bias: bool = False, layouts=None, layers: Any = None,
                 kinds: Any = None, skip_frozen: bool = True):
        roles = _check_choice(particles, roles, include_output, include_bias)
        self.particles = particles
        self.roles = roles
        self.include_output = include_output
        self.include_bias = include_bias
        self.sites: List[ResolvedLayout] = select_layers(find_attention(model, layouts), layers, kinds)
        groups: List[ParticleGroup] = []
        self.skipped: Dict[str, str] = {}
        frozen_tensors: Dict[int, str] = {}  # id(param) -> block name, each frozen tensor counted once
        for site in self.sites:
            for g in _groups_of_site(site, particles, roles, include_output, include_bias):
                frozen = [b for b in g.blocks if not b.param.requires_grad]
                if frozen and skip_frozen:
                    self.skipped[g.name] = "frozen: " + ", ".join(b.name for b in frozen)
                    for b in frozen:
                        frozen_tensors.setdefault(id(b.param), b.name)
                    continue
                groups.append(g)
        if frozen_tensors:
            # one warning for the whole model (a frozen base model, e.g. under PEFT, has dozens of tensors)
            def _first(items):
                items = list(items)
                return ", ".join(items[:3]) + (f", ... ({len(items) - 3} more)" if len(items) > 3 else "")

            warnings.warn(
                f"attention_adapter skipped {len(self.skipped)} particle group(s) ({_first(map(repr, self.skipped))}) "
                f"using {len(frozen_tensors)} frozen tensor(s) with requires_grad=False "
                f"({_first(frozen_tensors.values())})",
                UserWarning,
                stacklevel=2,
            )
        kept: List[ParticleGroup] = []
        for g in groups:
            if g.num_particles < 2:  # multi-query K/V: one head, nothing to repel
                self.skipped[g.name] = f"a single particle ({g.site.heads_text()}): nothing to repel"
                continue
            dup = next((o for o in kept if [b.key() for b in o.blocks] == [b.key() for b in g.blocks]), None)
            if dup is not None:  # the same tensors reached through two modules (tied weights)
                self.skipped[g.name] = f"shares its parameters with {dup.name!r}"
                continue
            for o in kept:
                clash = [(a.name, b.name) for a in o.blocks for b in g.blocks if _overlaps(a, b)]
                if clash:
                    raise ValueError(
                        f"particle groups {o.name!r} and {g.name!r} claim overlapping parts of {clash[0][0]!r}; "
                        "expected each head block to belong to one group"
                    )
            kept.append(g)
        if not kept:
            raise ValueError(
                f"expected at least one trainable group of attention heads, found none "
                f"(skipped: {self.skipped or 'none'})"
            )
        self.groups: Tuple[ParticleGroup, ...] = tuple(kept)

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self):
        return iter(self.groups)

    @property
    def names(self) -> List[str]:
        return [g.name for g in self.groups]

    def parameters(self) -> List[nn.Parameter]:
        """Distinct parameters touched by any group."""
        seen: Dict[int, nn.Parameter] = {}
        for g in self.groups:
            for p in g.params:
                seen.setdefault(id(p), p)
        return list(seen.values())

    def report(self) -> str:
        """Readable summary: modules found, groups (M x P) and skipped groups."""
        lines = [f"{len(self.sites)} attention module(s), {len(self.groups)} particle group(s) "
                 f"(particles={self.particles!r}, roles={''.join(self.roles)}, "
                 f"include_output={self.include_output}, include_bias={self.include_bias})"]
        for site in self.sites:
            where = site.name or "<root>"
            lines.append(f"  {where}: {type(site.module).__name__}, {site.attention}, {site.heads_text()}, {site.description}")
            lines.append(site.describe())
        for g in self.groups:
            lines.append(f"  group {g.name}: {g.num_particles} x {g.dim} ({' || '.join(g.roles)})")
        for name, why in self.skipped.items():
            lines.append(f"  skipped {name}: {why}")
        return "\n".join(lines)


def head_particles_of(obj: Any) -> Optional[HeadParticles]:
    """The :class:`HeadParticles` of ``obj``: itself, or its ``head_particles`` attribute
    (:class:`~attention_adapter.RepulsiveHeads`, :class:`~attention_adapter.HeadRepulsionPenalty`,
    :class:`~attention_adapter.HeadRecorder`); ``None`` for anything else."""
    if isinstance(obj, HeadParticles):
        return obj
    found = getattr(obj, "head_particles", None)
    return found if isinstance(found, HeadParticles) else None
