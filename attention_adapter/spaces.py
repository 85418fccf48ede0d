"""Where the heads are compared: their weights, their circuits, or their outputs.

The particle of a head, and so the kernel that says how alike two heads are, is chosen by one
argument, ``space``, of :class:`~attention_adapter.RepulsiveHeads` and
:class:`~attention_adapter.HeadRepulsionPenalty`:

``"weights"`` (default; An et al. 2020)
    A head is its raw weight rows (:mod:`attention_adapter.particles`).
``"circuits"``
    A head is its QK circuit ``W_q^T W_k`` and its OV circuit ``W_o W_v`` (Elhage et al. 2021,
    "A Mathematical Framework for Transformer Circuits"; ``W_q`` etc. are the head's ``d_head x
    d_model`` rows in torch's ``out x in`` layout, ``W_o`` its ``d_model x d_head`` columns). What a
    head computes depends on its weights only through these two products, so the kernel is
    invariant under ``W_q -> R^T W_q, W_k -> R^{-1} W_k`` and ``W_v -> S W_v, W_o -> W_o S^{-1}``
    (any invertible ``R``, ``S``), which move the weights and change nothing the head does. The
    products (``d_model x d_model``) are never formed: distances, kernel and repulsion come from
    ``d_head x d_head`` Gram blocks (:mod:`particlesampling.circuits`).
``"outputs"`` (function space; Wang et al., ICLR 2019)
    A head is what it computes on the current batch, on a fixed-size, seeded subsample of the
    batch's tokens: its output vectors ``W_o^h o_h(x)`` (the head's term of the output projection's
    sum; ``o_h`` alone where the module has no output projection), its attention maps (the rows of
    ``softmax(Q_h K_h^T / sqrt(d))`` at those tokens; ``features="maps"``), or both
    (``features="both"``; :mod:`attention_adapter.outputs`). The kernel and the repulsion are
    evaluated on these features by the core and pulled back to the head's parameters by one
    vector-Jacobian product per attention module (:mod:`particlesampling.function_space`).

How each layout maps to circuits (a row of the table is one product term; terms add up in ``D2``):

============================  ===============================================================
layout                        circuit terms of particle ``i``
============================  ===============================================================
separate or fused Q/K/V       QK: ``A = [W_q^T; b_q^T]``, ``B = [W_k^T; b_k^T]`` (biases, where
(any axis, interleaved)       the module has them, augment the input with a constant 1: the
                              bias of the attention logits is part of the circuit); OV:
                              ``A = W_o`` (its head columns), ``B = [W_v^T; b_v^T]``
grouped-query (``G < M``)     a particle is a key/value head with its ``r = M / G`` query heads
                              (as ``particles="joint"``): QK stacks the ``r`` query factors
                              over the shared key factor, ``A = [A_{g r}; ...; A_{g r + r - 1}]``,
                              OV stacks the ``r`` output factors over the shared value factor;
                              the invariance is then one ``R`` (and ``S``) per key/value head,
                              which is the symmetry grouped-query attention has
multi-query (``G = 1``)       the ``M`` query heads are the particles (Q and the output columns);
                              the one key (value) head enters every particle's QK (OV) circuit
                              as the same constant factor ``B`` and keeps its own gradient
cross-attention               the same: ``W_q`` reads the decoder's width and ``W_k``, ``W_v``
                              the encoder's, so ``A`` and ``B`` have different row counts
no output projection          V (with its bias) as a plain term, compared as weights
only Q, or only K             that projection (with its bias) as a plain term: the
(Lin et al.'s attention       self-attentive encoder's hops ``a = softmax(w_h^T tanh(W_s1 H^T))``
hops)                         have no per-hop symmetry, so circuits and weights coincide
============================  ===============================================================

``HeadSelection(particles="separate")`` gives two systems per module in circuit space, QK and OV
(each with its own bandwidth), ``"joint"`` one system whose distance sums both; ``roles`` picks the
circuits (``q`` or ``k``: QK; ``v``: OV), ``include_bias`` the biases. The OV circuit includes the
output projection's columns whenever the layout declares them (the circuit is defined by both), so
``include_output`` has no effect in circuit space. In function space each module is one system
over all of the heads' blocks in ``roles`` (plus the output columns with ``include_output``); with
``features="maps"`` over their query and key blocks only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

import particlesampling as ps

from .layouts import ResolvedLayout
from .particles import HeadParticles, ParticleGroup

__all__ = ["SPACES", "check_space", "CircuitStructure", "circuit_structure", "circuit_particles",
           "output_particles", "circuit_kernel_similarity", "circuit_gram", "gram_cosine", "circuit_similarity",
           "module_circuits", "circuit_direction"]

#: the spaces a head particle can live in
SPACES = ("weights", "circuits", "outputs")
_BIAS = {"q": "q_bias", "k": "k_bias", "v": "v_bias"}


def check_space(space) -> str:
    """``space`` if it is one of :data:`SPACES`, else ValueError."""
    if space not in SPACES:
        raise ValueError(f"expected space in {SPACES}, received {space!r}")
    return space


@dataclass(frozen=True)
class _Term:
    """One term of a circuit particle: a product of two factors, or a plain block."""

    a: Tuple[str, ...]  #: roles of factor A (weight role, then its bias if any); the plain block's roles
    b: Tuple[str, ...] = ()  #: roles of factor B; empty for a plain term
    b_shared: bool = False  #: B is one key/value head shared by every particle (multi-query): a constant

    @property
    def is_product(self) -> bool:
        return bool(self.b)


def _with_bias(role: str, have) -> Tuple[str, ...]:
    return (role,) + ((_BIAS[role],) if _BIAS.get(role) in have else ())


def _terms_of_roles(roles: Sequence[str], shared: Sequence[str] = ()) -> List[_Term]:
    """The circuit terms of a group made of ``roles``, with the multi-query ``shared`` roles (module table)."""
    have, common = set(roles), set(shared)
    terms = []
    if "q" in have and ("k" in have or "k" in common):
        terms.append(_Term(_with_bias("q", have), _with_bias("k", have | common), b_shared="k" in common))
    else:
        terms += [_Term(_with_bias(r, have)) for r in ("q", "k") if r in have]
    if "out" in have and ("v" in have or "v" in common):
        terms.append(_Term(("out",), _with_bias("v", have | common), b_shared="v" in common))
    elif "v" in have:
        terms.append(_Term(_with_bias("v", have)))
    elif "out" in have:
        terms.append(_Term(("out",)))
    return terms


class CircuitStructure:
    """The map between a circuit group's ``(M, P)`` rows and its terms (module table).

    The rows are the group's blocks concatenated as :meth:`ParticleGroup.gather` makes them (head
    ``h``'s block of a role is ``(d_head, rest)``, row-major; a bias is ``(d_head,)``); the terms are
    those of :mod:`particlesampling.circuits`: per product term a pair ``(A (M, a, d_head),
    B (M, b, d_head))``, per plain term an ``(M, width)`` array. Both maps are linear
    rearrangements (differentiable, exact inverses of each other).

    Multi-query attention (one key/value head for all ``M`` query heads): the particles are the
    query heads (with their output columns), and the shared key (value) factor enters every
    particle's circuit as the same constant ``B`` (read from the parameter, not a particle).
    """

    def __init__(self, group: ParticleGroup, shared: Optional[Dict[str, "object"]] = None):
        self.group = group
        self.shared = dict(shared or {})  # role -> ResolvedBlock of a key/value head common to all particles
        m = group.num_particles
        self.segments: Dict[str, Tuple[int, int, int, int]] = {}  # role -> (offset, heads per particle, d_head, rest)
        offset = 0
        for role, b in zip(group.roles, group.blocks):
            c = b.num_heads // m
            rest = b.numel_per_head // b.head_size
            self.segments[role] = (offset, c, b.head_size, rest)
            offset += c * b.numel_per_head
        self.dim = offset
        self.terms = _terms_of_roles(group.roles, tuple(self.shared))
        for t in self.terms:
            if t.is_product and not t.b_shared and self.segments[t.b[0]][1] != 1:
                raise ValueError(f"group {group.name!r}: expected one key/value head per particle for the circuit "
                                 f"of {t.a[0]} and {t.b[0]}, received {self.segments[t.b[0]][1]}")

    def _seg(self, rows, role):
        off, c, hs, rest = self.segments[role]
        return rows[:, off:off + c * hs * rest].reshape(rows.shape[0], c, hs, rest)

    def _shared_seg(self, m, role, source, like):
        b = self.shared[role]
        if source == "zeros":
            block = torch.zeros((1, b.numel_per_head), dtype=like.dtype, device=like.device)
        else:
            block = b.gather(b.param if source == "param" else b.param.detach()).to(like.dtype)
        block = block.reshape(1, 1, b.head_size, -1)
        return block.expand(m, 1, b.head_size, block.shape[-1])

    def _factor(self, rows, roles, shared_source=None):
        """``(M, c (rest + bias), d_head)``: each head's ``[W^T; b^T]`` stacked over its ``c`` heads."""
        m = rows.shape[0]
        segs = [self._seg(rows, r) if r in self.segments else self._shared_seg(m, r, shared_source, rows)
                for r in roles]
        parts = [s.transpose(-1, -2) for s in segs]  # (M, c, rest, hs), bias (M, c, 1, hs)
        f = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)
        return f.reshape(m, -1, f.shape[-1])

    def to_terms(self, rows: torch.Tensor, shared: str = "data") -> list:
        """The terms of ``rows`` ``(M, P)`` (a list, as :mod:`particlesampling.circuits` takes).

        ``shared`` says what a multi-query key/value factor is: ``"data"`` (the parameter's values),
        ``"param"`` (the parameter, differentiable) or ``"zeros"`` (for scores: it is no particle's).
        """
        out = []
        for t in self.terms:
            if t.is_product:
                out.append((self._factor(rows, t.a), self._factor(rows, t.b, shared)))
            else:
                out.append(torch.cat([self._seg(rows, r).reshape(rows.shape[0], -1) for r in t.a], dim=1))
        return out

    def to_rows(self, terms) -> torch.Tensor:
        """The inverse of :meth:`to_terms`: ``(M, P)`` rows from terms (directions, say); the shared
        factors' parts are dropped."""
        m = (terms[0][0] if isinstance(terms[0], (tuple, list)) else terms[0]).shape[0]
        pieces: Dict[str, torch.Tensor] = {}
        for t, value in zip(self.terms, terms):
            if t.is_product:
                for roles, f, shared in ((t.a, value[0], False), (t.b, value[1], t.b_shared)):
                    if shared:
                        continue
                    _, c, hs, _ = self.segments[roles[0]]
                    f = f.reshape(m, c, -1, hs)
                    start = 0
                    for r in roles:
                        rest = self.segments[r][3]
                        pieces[r] = f[:, :, start:start + rest].transpose(-1, -2).reshape(m, -1)
                        start += rest
            else:
                start = 0
                for r in t.a:
                    _, c, hs, rest = self.segments[r]
                    pieces[r] = value[:, start:start + c * hs * rest]
                    start += c * hs * rest
        return torch.cat([pieces[r] for r in self.group.roles], dim=1)


def _is_multi_query(site: ResolvedLayout) -> bool:
    return site.num_kv_heads == 1 and site.num_heads > 1


_KV = ("k", "v", "k_bias", "v_bias")


def _circuit_groups_of_site(site: ResolvedLayout, particles: str, roles, include_bias: bool) -> List[ParticleGroup]:
    blocks = site.blocks
    present = [r for r in roles if r in blocks]
    mqa = _is_multi_query(site)
    members: List[Tuple[str, List[str]]] = []
    qk = [r for r in ("q", "k") if r in present]
    if qk:
        label = "qk-circuit" if len(qk) == 2 else f"{qk[0]}-circuit"
        members.append((label, qk + [_BIAS[r] for r in qk if include_bias and _BIAS[r] in blocks]))
    if "v" in present:
        ov = ["v"] + (["out"] if "out" in blocks else [])
        members.append(("ov-circuit" if "out" in blocks else "v-circuit",
                        ov + (["v_bias"] if include_bias and "v_bias" in blocks else [])))
    if mqa:  # the query heads are the particles; the one key/value head is a constant factor
        members = [(label, [r for r in rs if r not in _KV]) for label, rs in members]
        members = [(label, rs) for label, rs in members if rs]
    if particles == "joint" and len(members) > 1:
        members = [("circuits", [r for _, rs in members for r in rs])]
    return [ParticleGroup(f"{site.name}:{label}", site, tuple(rs), tuple(blocks[r] for r in rs))
            for label, rs in members]


def shared_blocks(group: ParticleGroup, include_bias: bool = False) -> Dict[str, object]:
    """The multi-query key/value blocks the circuits of ``group`` read as constants (empty otherwise)."""
    site = group.site
    if not _is_multi_query(site):
        return {}
    want = set(group.roles)
    out = {}
    for particle_role, role in (("q", "k"), ("out", "v")):
        if particle_role in want and role in site.blocks:
            out[role] = site.blocks[role]
            if include_bias and _BIAS[role] in site.blocks:
                out[_BIAS[role]] = site.blocks[_BIAS[role]]
    return out


def circuit_structure(group: ParticleGroup, include_bias: bool = False) -> CircuitStructure:
    """The :class:`CircuitStructure` of a circuit group (with its multi-query shared factors; their
    biases with ``include_bias``)."""
    return CircuitStructure(group, shared_blocks(group, include_bias))


def circuit_particles(heads: HeadParticles, *, skip_frozen: bool = True) -> HeadParticles:
    """The circuit-space version of ``heads``: the same sites, groups made of circuits (module table).

    Groups with a frozen tensor (with ``skip_frozen``) or a single particle are skipped (listed in
    ``skipped``), as in weight space.
    """
    return _particles_in_space(
        heads, lambda site: _circuit_groups_of_site(site, heads.particles, heads.roles, heads.include_bias),
        "circuit space", skip_frozen, validate=lambda g: circuit_structure(g, heads.include_bias))


def _particles_in_space(heads: HeadParticles, groups_of_site, space: str, skip_frozen: bool,
                        validate=None) -> HeadParticles:
    """A copy of ``heads`` whose groups are ``groups_of_site(site)`` over its sites, frozen and
    single-particle groups listed in ``skipped`` (the rule of weight space); ``validate(group)`` raises on a
    group it cannot serve."""
    out = copy.copy(heads)
    out.skipped = dict(heads.skipped)
    groups = []
    for site in heads.sites:
        for g in groups_of_site(site):
            frozen = [b.name for b in g.blocks if not b.param.requires_grad]
            if frozen and skip_frozen:
                out.skipped[g.name] = "frozen: " + ", ".join(frozen)
            elif g.num_particles < 2:
                out.skipped[g.name] = f"a single particle ({site.heads_text()}): nothing to repel"
            else:
                if validate is not None:
                    validate(g)
                groups.append(g)
    if not groups:
        raise ValueError(f"expected at least one trainable group of attention heads in {space}, found none "
                         f"(skipped: {out.skipped or 'none'})")
    out.groups = tuple(groups)
    return out


def _output_groups_of_site(site: ResolvedLayout, roles, include_output: bool, include_bias: bool,
                           features: str = "outputs"):
    blocks = site.blocks
    if features == "maps":  # the maps depend on the queries and keys only
        roles = [r for r in roles if r in ("q", "k")]
    members = [r for r in roles if r in blocks]
    if include_output and "out" in blocks and features != "maps":
        members.append("out")
    if include_bias:
        members += [_BIAS[r] for r in roles if r in blocks and _BIAS[r] in blocks]
    if _is_multi_query(site):  # particles are the query heads; the shared key/value head keeps its gradient
        members = [r for r in members if r not in _KV]
    if not members:
        return []
    label = "".join(r for r in members if r in ("q", "k", "v")) + ("+out" if "out" in members else "") + \
        ("+bias" if any(r.endswith("_bias") for r in members) else "")
    suffix = {"outputs": "outputs", "maps": "maps", "both": "outputs+maps"}[features]
    return [ParticleGroup(f"{site.name}:{label}-{suffix}", site, tuple(members), tuple(blocks[r] for r in members))]


def output_particles(heads: HeadParticles, *, skip_frozen: bool = True, features: str = "outputs") -> HeadParticles:
    """The function-space version of ``heads``: one system per attention module over its heads' blocks in
    ``roles`` (and output columns with ``include_output``, biases with ``include_bias``). Under grouped-query
    attention a particle is a key/value head with its query heads; under multi-query attention the particles
    are the query heads and the one key/value head is no particle. With ``features="maps"`` only the query
    and key blocks (and their biases) are particles, since the maps depend on nothing else."""
    return _particles_in_space(
        heads, lambda site: _output_groups_of_site(site, heads.roles, heads.include_output, heads.include_bias,
                                                   features),
        "function space", skip_frozen)


def circuit_direction(structure: CircuitStructure, particles: torch.Tensor, scores: torch.Tensor, kernel=None,
                      bandwidth=None, repulsion: float = 1.0):
    """The SVGD direction ``phi`` ``(M, P)`` of one circuit group and its :class:`particlesampling.SteinInfo`.

    ``particles`` and ``scores`` are the group's ``(M, P)`` rows (parameter space); the core
    (:func:`particlesampling.circuits.circuit_stein_direction`) computes ``phi = (K S + r R) / M`` with
    the kernel on circuit distances and the closed-form repulsion, and the result is mapped back to
    rows.
    """
    phi, info = ps.circuits.circuit_stein_direction(structure.to_terms(particles), structure.to_terms(scores, "zeros"),
                                                    kernel=kernel, bandwidth=bandwidth, repulsion=repulsion)
    return structure.to_rows(phi), info


def circuit_kernel_similarity(structure: CircuitStructure, rows: torch.Tensor, kernel=None,
                              bandwidth=None) -> torch.Tensor:
    """Mean off-diagonal kernel value on circuit distances, differentiable in ``rows`` ``(M, P)``.

    The bandwidth is computed by the core rule on the detached distances (as in weight space); the
    kernel is the core's radial profile on ``D2 / h``. 0 when ``M = 1``.
    """
    m = rows.shape[0]
    if m < 2:
        return rows.sum() * 0.0
    kern = ps.get_kernel(kernel)
    if not getattr(kern, "is_radial", False):
        raise TypeError(f"expected a radial kernel on circuit distances, received {type(kern).__name__}")
    gram = ps.circuits.circuit_inner(structure.to_terms(rows, "param" if rows.requires_grad else "data"))
    with torch.no_grad():
        h = ps.circuits.circuit_bandwidth(bandwidth, ps.circuits.circuit_inner(structure.to_terms(rows.detach())))
    k = kern.value(gram.sqdist / h)
    return (k.sum() - k.diagonal().sum()) / float(m * (m - 1))


def circuit_gram(structure: CircuitStructure, rows: torch.Tensor) -> torch.Tensor:
    """The inner products ``<theta_i, theta_j>`` of the heads' circuits, summed over the terms.

    ``rows`` ``(M, P)``; returns ``(M, M)`` float64 (detached), from ``d_head x d_head`` products only
    (:func:`particlesampling.circuits.circuit_inner`). Grams of different circuits of the same heads add
    up to the Gram of their joint particle (as ``particles="joint"`` sums the distances).
    """
    return ps.circuits.circuit_inner(structure.to_terms(rows.detach().double())).inner


def gram_cosine(inner: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``inner[i, j] / sqrt(inner[i, i] inner[j, j])``: ``(M, M)`` Gram -> ``(M, M)`` float32 cosines."""
    norm = inner.diagonal().clamp_min(eps).sqrt()
    return (inner / norm[:, None] / norm[None, :]).float()


def circuit_similarity(structure: CircuitStructure, rows: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Cosine similarity of the heads' circuits, ``<theta_i, theta_j> / (|theta_i| |theta_j|)`` with the
    inner product summed over terms (``(M, M)``, float32, from ``d_head x d_head`` products only)."""
    return gram_cosine(circuit_gram(structure, rows), eps)


def module_circuits(site: ResolvedLayout, include_bias: bool = False) -> Dict[str, CircuitStructure]:
    """Every circuit of one attention module's heads, whatever a selection keeps of it.

    ``{"qk": structure, "ov": structure}`` (either absent where the module has no such block): the
    groups :func:`circuit_particles` makes for ``site`` with ``particles="separate"`` and all of Q, K,
    V (the output projection in the OV circuit wherever the layout declares it; biases with
    ``include_bias``). Under grouped-query attention a particle is a key/value head with its query heads;
    a module with only Q or only K (Lin et al.'s hops) has a ``"qk"`` entry that is that block, plain.
    Raises ValueError where a circuit cannot be formed (as :func:`circuit_particles` does).
    """
    out: Dict[str, CircuitStructure] = {}
    for g in _circuit_groups_of_site(site, "separate", ("q", "k", "v"), include_bias):
        side = "qk" if {"q", "k"} & set(g.roles) else "ov"
        out[side] = circuit_structure(g, include_bias)
    return out
