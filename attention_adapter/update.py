"""The update rule of one group of head particles, as a pure function.

A *group* is the ``M`` heads of one attention module for one choice of tensors (see
:mod:`attention_adapter.particles`): its parameters are an ``(M, P)`` matrix ``X`` (row ``i`` =
head ``i``) and its loss gradient an ``(M, P)`` matrix ``G`` (the gradient of the minibatch-*mean*
loss). :func:`head_update` returns the gradient ``Ĝ`` (``M x P``) that replaces ``G``, so that an
unchanged optimizer stepping along ``-Ĝ`` moves the heads as SVGD or SPOS particles. It only builds
the scores and the final combination; the Stein direction comes from the core,
:func:`particlesampling.stein_direction_with_info`:

.. math::

    \\phi = \\frac{1}{M} (K S + a R), \\qquad K_{ij} = k(x_i, x_j), \\qquad
    R_i = \\sum_j \\nabla_{x_j} k(x_j, x_i)

(Liu & Wang 2016, eq. 8; ``a`` = ``repulsion``; RBF: ``k = exp(-|x - y|^2 / h)``,
``R_i = (2/h)(rowsum(K)_i x_i - (K X)_i)``).

Posterior form (``RepulsiveHeads(..., preset=None)``)
    The heads sample ``p(theta | D) ∝ p(D | theta) p(theta)`` for a data set of ``N`` examples,
    whose score at head ``i`` is estimated from the minibatch-mean gradient:
    ``S_i = -N G_i + grad log p(theta_i)``. With ``e`` = ``step_size``:

    * SVGD: ``Ĝ = -e phi``, so plain SGD with learning rate ``lr`` performs the SVGD update
      ``theta <- theta + lr e phi`` (Liu & Wang 2016, eq. 7);
    * SPOS: ``Ĝ = -e (S / beta + phi) - sqrt(2 e / (beta lr)) xi``, ``xi ~ N(0, I)``, so plain SGD
      performs ``theta <- theta + e' (S / beta + phi) + sqrt(2 e' / beta) xi`` with ``e' = lr e``:
      the SPOS update of Zhang et al. (2020, eq. 4) in the core's convention (drift ``S / beta``,
      noise variance ``2 e' / beta``, :func:`particlesampling.spos`).

An et al. (2020) preset (:class:`An2020`, the authors' fairseq trainer), in the paper's symbols
``alpha``, ``epsilon``, ``beta``
    Q, K and V separate, RBF kernel, ``m`` = lower median of all ``M^2`` squared distances,
    ``sigma^2 = m / (2 log(M + 1))`` (core bandwidth ``"an2020"``, ``h = 2 sigma^2``), and

    * SVGD: ``Ĝ = epsilon (1/M) [K G - alpha R]``;
    * SPOS: ``Ĝ = epsilon {(1/M) [K G - alpha R] + beta G - sqrt(2 beta / epsilon) c xi}``,
      ``c = median |G|`` (lower median over the group's ``M x P`` entries).

    With ``S = -G`` these are exactly the posterior form with ``N = 1``, a flat prior,
    ``repulsion = alpha``, ``step_size = epsilon``, and for SPOS the core's ``beta = 1 / beta_paper``,
    ``lr = 1`` and the noise multiplied by ``c``: ``epsilon beta_paper G = -e S / beta`` and
    ``epsilon sqrt(2 beta_paper / epsilon) c = sqrt(2 e / beta) c``. :meth:`An2020.settings` makes
    this translation, so one formula serves all four rules:

    .. math::

        \\hat G = -e \\, \\phi \\quad \\text{(SVGD)}, \\qquad
        \\hat G = -e \\, (S / \\beta + \\phi) - c \\sqrt{2 e / (\\beta \\, lr)} \\, \\xi \\quad
        \\text{(SPOS)}

    with ``c = 1`` (``noise_scale="unit"``) or ``c = median |G|`` (``noise_scale="median_abs_grad"``).

Outside :class:`An2020`, the names are the core's: ``step_size`` (not epsilon), ``repulsion`` (not
alpha), and ``beta`` only as the core's SPOS ``beta``.

The terms, one switch each (ablations)
    Written out, the SPOS rule has four terms,

    ``Ĝ = -e [S / beta  +  (1/M) K S  +  (a/M) R]  -  c sqrt(2 e / (beta lr)) xi``

    (the Langevin drift, the kernel-smoothed drive, the repulsion and the noise),
    and SVGD has the middle two. :class:`UpdateSettings` switches each off on its own, leaving the
    others exactly as they were: ``repulsion=0`` (the repulsive term), ``kernel_drive=False`` (the
    core's direction is evaluated with zero scores, so ``phi = (a/M) R``), and for SPOS
    ``langevin_drift=False`` and ``noise=False``. With both drives and the repulsion off SPOS is
    left with its noise alone; with ``kernel_drive=False, repulsion=0`` it is Langevin dynamics
    (SGLD) of each head, the heads not interacting at all. The noise, when kept, is the same draw
    ``xi`` whichever other terms are off.

Groups of equal shape (the Q, K and V groups of every layer, say) are independent particle systems:
:func:`head_update_batched` applies the same rule to a stack ``(B, M, P)`` of them in one pass of
batched matrix products (:func:`particlesampling.stein_direction_batched`, each group with its own
bandwidth and noise scale), with the results of ``B`` calls of :func:`head_update`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Tuple

import torch

import particlesampling as ps
from particlesampling import validation

__all__ = [
    "UPDATE_RULES",
    "NOISE_SCALES",
    "Posterior",
    "UpdateSettings",
    "An2020",
    "head_update",
    "head_update_batched",
    "compute_dtype",
    "resolve_kernel",
    "kernel_matrix",
]

#: the update rules the adapter offers (the core's samplers are ``particlesampling.SAMPLERS``)
UPDATE_RULES = ("svgd", "spos")
#: ``c`` in the SPOS noise ``c sqrt(2 e / (beta lr)) xi``: 1, or An et al.'s ``median |G|``
NOISE_SCALES = ("unit", "median_abs_grad")
_HALF = (torch.float16, torch.bfloat16)


def _real(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` as a finite float ``> 0`` (``>= 0`` with ``allow_zero``)."""
    return validation.check_real(name, value, minimum=0, inclusive=allow_zero)


def resolve_kernel(kernel: Any = None, bandwidth: Any = None):
    """The core's kernel and bandwidth rule for two user specs (shared by the update and the penalty).

    Parameters
    ----------
    kernel : None, str or particlesampling.Kernel
        See :func:`particlesampling.get_kernel` (``None``: RBF).
    bandwidth : None, str, float > 0 or particlesampling.BandwidthRule
        See :func:`particlesampling.get_bandwidth` (``None``: the core's default median rule).

    Returns
    -------
    (particlesampling.Kernel, particlesampling.BandwidthRule)
    """
    return ps.get_kernel(kernel), ps.get_bandwidth(bandwidth)


def kernel_matrix(theta: torch.Tensor, kernel, bandwidth) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Gram matrix ``K`` (``M x M``) of the rows of ``theta`` (``M x P``) and the bandwidth ``h``.

    ``kernel`` and ``bandwidth`` are resolved core objects (:func:`resolve_kernel`). The bandwidth is
    computed by the core rule on ``theta.detach()`` (``ps.sqdist``), so ``K`` is differentiable in
    ``theta`` through the kernel values only. ``h`` is ``None`` for kernels without a bandwidth.
    """
    xd = theta.detach()
    h = bandwidth(xd, ps.sqdist(xd), None) if kernel.uses_bandwidth else None
    return kernel.gram(theta, theta, h), h


def _prior_score(prior: Any) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """``None`` (flat), a standard deviation ``s > 0`` (``N(0, s^2 I)``) or a callable grad-log-prior."""
    if prior is None:
        return None
    if isinstance(prior, (int, float)) and not isinstance(prior, bool):
        var = _real("prior (standard deviation of a N(0, s^2 I) prior)", prior) ** 2
        return lambda theta: theta * (-1.0 / var)
    if callable(prior):
        return prior
    raise TypeError(
        "expected prior as None (flat), a positive standard deviation or a callable "
        f"theta (M, P) -> grad log p(theta) (M, P), received {type(prior).__name__}"
    )


@dataclass(frozen=True)
class Posterior:
    """The target of the posterior form: ``p(theta | D) ∝ p(D | theta) p(theta)`` per head particle.

    The score at head ``i`` is ``S_i = -N G_i + grad log p(theta_i)``, ``G`` being the gradient of
    the *mean* per-example loss (negative log-likelihood) of the minibatch.

    Parameters
    ----------
    dataset_size : float > 0
        ``N``, the number of training examples (default 1: the minibatch-mean loss counts as one
        observation, as in An et al. 2020).
    prior : None, float > 0 or callable
        ``None``: flat; a number ``s``: ``N(0, s^2 I)``; a callable
        ``theta (M, P) -> grad log p(theta) (M, P)``.
    """

    dataset_size: float = 1.0
    prior: Any = None
    prior_score: Optional[Callable[[torch.Tensor], torch.Tensor]] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "dataset_size", _real("dataset_size", self.dataset_size))
        object.__setattr__(self, "prior_score", _prior_score(self.prior))

    def score(self, theta: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """``S = -N G + grad log p(theta)``, shape ``(M, P)`` like ``grads``.

        A stack ``(B, M, P)`` of groups gives ``(B, M, P)``; a callable prior is then called on each
        group ``(M, P)`` in turn (its contract), a numeric one on the whole stack (elementwise)."""
        s = -grads if self.dataset_size == 1.0 else grads * (-self.dataset_size)
        if self.prior_score is None:
            return s
        if theta.dim() == 3 and callable(self.prior) and not isinstance(self.prior, (int, float)):
            return s + torch.stack([self.prior_score(t) for t in theta.unbind(0)])
        return s + self.prior_score(theta)


@dataclass(frozen=True)
class UpdateSettings:
    """Everything :func:`head_update` needs, validated once (immutable).

    Parameters
    ----------
    method : {"svgd", "spos"}
    step_size : float > 0
        ``e``, the multiplier of the transformed gradient (module docstring).
    repulsion : float >= 0
        Weight ``a`` of the repulsive term ``R`` in ``phi`` (1 = SVGD proper).
    beta : float > 0
        The core's SPOS ``beta`` (drift ``S / beta``, noise variance ``2 e lr / beta``). SPOS only.
    posterior : Posterior
        ``N`` and the prior of the score ``S``.
    kernel, bandwidth :
        Core specs or objects (:func:`resolve_kernel`); stored resolved.
    lr : float > 0, optional
        SPOS only: the optimizer's learning rate (the noise scale depends on it). ``None``: it must
        be given to :func:`head_update` at each call.
    noise_scale : {"unit", "median_abs_grad"}
        ``c`` of the SPOS noise: 1, or An et al.'s ``median |G|`` (lower median).
    kernel_drive : bool
        Keep the kernel-smoothed driving term ``(1/M) K S`` of ``phi`` (default). False drops it
        alone: ``phi = (a/M) R``.
    langevin_drift : bool
        SPOS only: keep the Langevin drift ``S / beta`` (default). False drops it alone.
    noise : bool
        SPOS only: keep the noise term (default). False drops it alone (no ``noise`` and no ``lr``
        are needed then).
    """

    method: str = "svgd"
    step_size: float = 1.0
    repulsion: float = 1.0
    beta: float = 1.0
    posterior: Posterior = field(default_factory=Posterior)
    kernel: Any = None
    bandwidth: Any = None
    lr: Optional[float] = None
    noise_scale: str = "unit"
    kernel_drive: bool = True
    langevin_drift: bool = True
    noise: bool = True

    def __post_init__(self):
        validation.check_choice("method", self.method, UPDATE_RULES)
        validation.check_choice("noise_scale", self.noise_scale, NOISE_SCALES)
        for name in ("kernel_drive", "langevin_drift", "noise"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"expected {name} as a bool, received {getattr(self, name)!r}")
        spos_off = [name for name in ("langevin_drift", "noise") if not getattr(self, name)]
        if spos_off and self.method != "spos":
            raise ValueError(f"{' and '.join(spos_off)} switch off terms of method='spos' only; received "
                             f"{', '.join(f'{n}=False' for n in spos_off)} with method={self.method!r}")
        object.__setattr__(self, "step_size", _real("step_size", self.step_size))
        object.__setattr__(self, "repulsion", _real("repulsion", self.repulsion, allow_zero=True))
        object.__setattr__(self, "beta", _real("beta", self.beta))
        if not isinstance(self.posterior, Posterior):
            raise TypeError(f"expected posterior as a Posterior, received {type(self.posterior).__name__}")
        kern, rule = resolve_kernel(self.kernel, self.bandwidth)
        object.__setattr__(self, "kernel", kern)
        object.__setattr__(self, "bandwidth", rule)
        if self.lr is not None:
            object.__setattr__(self, "lr", _real("lr", self.lr))
            if self.method != "spos":
                raise ValueError(f"lr is used only by method='spos' (its noise scale); received it with "
                                 f"method={self.method!r}")


@dataclass(frozen=True)
class An2020:
    """The preset of An et al. (2020), in the paper's symbols (the only place they are used).

    Reproduces the authors' fairseq trainer: Q, K and V as separate particle systems (no output
    projection, no biases), RBF kernel with the ``"an2020"`` bandwidth, and (module docstring)

    * SVGD: ``Ĝ = epsilon (1/M) [K G - alpha R]``;
    * SPOS: ``Ĝ = epsilon {(1/M) [K G - alpha R] + beta G - sqrt(2 beta / epsilon) c xi}``,
      ``c = median |G|``.

    Parameters
    ----------
    alpha : float >= 0
        The paper's repulsion weight (``--alpha``; published: 0.01, or 1 / 0.005 for Lin et al.'s
        classifier). The core's ``repulsion``.
    epsilon : float > 0
        The paper's ``--stepsize`` (published: 0.01 or 0.1 with Adam, 1 for the classifier). The
        core's ``step_size``.
    beta : float > 0
        The paper's weight of the Langevin term ``beta G`` (SPOS only). The core's SPOS ``beta`` is
        ``1 / beta``.
    """

    alpha: float = 0.01
    epsilon: float = 0.01
    beta: float = 1.0

    name = "an2020"
    #: the particle choice the preset fixes (see :class:`attention_adapter.HeadSelection`)
    particle_choice = dict(particles="separate", roles=("q", "k", "v"), include_output=False, include_bias=False)

    def __post_init__(self):
        object.__setattr__(self, "alpha", _real("alpha", self.alpha, allow_zero=True))
        object.__setattr__(self, "epsilon", _real("epsilon", self.epsilon))
        object.__setattr__(self, "beta", _real("beta", self.beta))

    def settings(self, method: str) -> UpdateSettings:
        """The :class:`UpdateSettings` of this preset: the paper's symbols in the core's names."""
        validation.check_choice("method", method, UPDATE_RULES)
        if method == "svgd" and self.beta != 1.0:
            raise ValueError(f"An2020 beta weights the SPOS Langevin term; received beta={self.beta!r} with "
                             "method='svgd'")
        return UpdateSettings(method=method, step_size=self.epsilon, repulsion=self.alpha,
                              beta=1.0 / self.beta, posterior=Posterior(1.0, None), kernel="rbf",
                              bandwidth="an2020", lr=1.0 if method == "spos" else None,
                              noise_scale="median_abs_grad")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype :func:`head_update` computes in: float32 for float16/bfloat16, else ``dtype``."""
    return torch.float32 if dtype in _HALF else dtype


def _check_matrix(name: str, t: Any, shape=None, *, stacked: bool = False) -> None:
    want = "a 3-D (B, M, P)" if stacked else "a 2-D (M, P)"
    if not isinstance(t, torch.Tensor) or t.dim() != (3 if stacked else 2):
        raise ValueError(f"expected {name} as {want} torch tensor, received "
                         f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"expected {name} of shape {tuple(shape)} (the particles' shape), received {tuple(t.shape)}")


def head_update(particles: torch.Tensor, grads: torch.Tensor, settings: UpdateSettings,
                noise: Optional[torch.Tensor] = None, *, lr: Optional[float] = None,
                direction: Optional[Callable] = None):
    """The gradient ``Ĝ`` that replaces ``G`` for one group of head particles (module docstring).

    Parameters
    ----------
    particles : torch.Tensor, shape (M, P)
        Head parameters ``X``, row ``i`` = head ``i`` (detached).
    grads : torch.Tensor, shape (M, P)
        ``G``, the gradient of the minibatch-mean loss, row ``i`` = head ``i``.
    settings : UpdateSettings
    noise : torch.Tensor, shape (M, P), optional
        Standard normal draws ``xi``; required for ``method="spos"`` (unless ``settings.noise`` is
        False), ignored otherwise.
    lr : float > 0, optional
        The optimizer's learning rate for the SPOS noise; overrides ``settings.lr``.
    direction : callable, optional
        ``direction(X, S, kernel, bandwidth, repulsion) -> (phi, SteinInfo)``, the Stein direction
        ``phi`` ``(M, P)`` in another space than the weights (:mod:`attention_adapter.spaces`: the
        circuits' kernel, or the heads' outputs). Default: :func:`particlesampling.stein_direction_with_info`
        on the rows. The rest of the rule (scores, step size, SPOS drift and noise) is the same.

    Returns
    -------
    new_grads : torch.Tensor, shape (M, P)
        ``Ĝ``, in ``grads``' dtype, or float32 for float16/bfloat16 inputs (computed in float32).
    info : particlesampling.SteinInfo
        The core's ``bandwidth``, ``mean_kernel``, ``driving_norm``, ``repulsion_norm`` (0-d tensors).

    Pure: the result depends only on the arguments (the noise is drawn by the caller).
    """
    return _update(particles, grads, settings, noise, lr, stacked=False, direction=direction)


def head_update_batched(particles: torch.Tensor, grads: torch.Tensor, settings: UpdateSettings,
                        noise: Optional[torch.Tensor] = None, *, lr: Optional[float] = None):
    """:func:`head_update` for ``B`` groups of equal shape at once, stacked as ``(B, M, P)``.

    Each group ``b`` is its own particle system: ``Ĝ[b]`` equals
    ``head_update(particles[b], grads[b], settings, noise[b], lr=lr)[0]`` (its own bandwidth, its own
    ``median |G_b|`` noise scale), computed with batched matrix products
    (:func:`particlesampling.stein_direction_batched`) instead of ``B`` calls.

    Parameters
    ----------
    particles, grads : torch.Tensor, shape (B, M, P)
    settings : UpdateSettings
    noise : torch.Tensor, shape (B, M, P), optional
        Required for ``method="spos"`` (unless ``settings.noise`` is False).
    lr : float > 0, optional
        As for :func:`head_update`, shared by the ``B`` groups.

    Returns
    -------
    new_grads : torch.Tensor, shape (B, M, P)
    info : particlesampling.SteinInfo
        Fields with a leading ``(B,)`` axis (``bandwidth`` ``(B,)``, or ``(B, P)`` per dimension).
    """
    return _update(particles, grads, settings, noise, lr, stacked=True)


def _update(particles, grads, settings, noise, lr, *, stacked: bool, direction=None):
    """The one implementation of :func:`head_update` (``stacked=False``) and :func:`head_update_batched`."""
    if not isinstance(settings, UpdateSettings):
        raise TypeError(f"expected settings as an UpdateSettings, received {type(settings).__name__}")
    _check_matrix("particles", particles, stacked=stacked)
    _check_matrix("grads", grads, particles.shape, stacked=stacked)
    cdt = compute_dtype(grads.dtype)
    g = grads.to(cdt)
    x = particles.to(cdt)
    s = settings.posterior.score(x, g)
    if direction is None:
        direction = ps.stein_direction_batched_with_info if stacked else ps.stein_direction_with_info
        # RepulsiveHeads checks the gradients upstream (check_finite, on_nonfinite): the core's check is not repeated
        direction = functools.partial(direction, check_finite=False)
    elif stacked:
        raise ValueError("expected direction=None for a stack of groups (B, M, P); call head_update per group")
    # kernel_drive=False: the direction with zero scores is the repulsive term alone, (a/M) R
    phi, info = direction(x, s if settings.kernel_drive else torch.zeros_like(s), kernel=settings.kernel,
                          bandwidth=settings.bandwidth, repulsion=settings.repulsion)
    e = settings.step_size
    if settings.method == "svgd":
        return phi * (-e), info
    drift = s * (1.0 / settings.beta) + phi if settings.langevin_drift else phi
    if not settings.noise:
        return drift * (-e), info
    if noise is None:
        raise ValueError(f"expected noise {'(B, M, P)' if stacked else '(M, P)'} standard normal draws for "
                         "method='spos', received None")
    _check_matrix("noise", noise, particles.shape, stacked=stacked)
    lr = settings.lr if lr is None else _real("lr", lr)
    if lr is None:
        raise ValueError("method='spos' needs the optimizer's learning rate for its noise scale: expected "
                         "settings.lr or lr=..., received neither")
    scale = math.sqrt(2.0 * e / (settings.beta * lr))
    xi = noise.to(cdt)
    if settings.noise_scale == "median_abs_grad":
        # torch.median's lower median, by selection (core); one per group
        c = ps.lower_median(g.abs(), batch_dims=1 if stacked else 0)
        xi = xi * ((c[:, None, None] if stacked else c) * scale)
    else:
        xi = xi * scale
    return drift * (-e) - xi, info
