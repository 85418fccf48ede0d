"""``RepulsiveHeads``: rewrite the attention heads' gradients into the SVGD/SPOS direction.

Between ``loss.backward()`` and ``optimizer.step()`` each particle group's gradient ``G`` (``M x P``,
one row per head) is replaced, in place, by a transformed gradient ``Ĝ``; the unchanged optimizer then
steps along ``-Ĝ``. The Stein direction itself comes from the core,
:func:`particlesampling.stein_direction_with_info` (``phi = (K S + alpha R) / M``, Liu & Wang 2016,
eq. 8); this module only builds the scores and the final combination.

Principled mode (``preset=None``)
    The heads sample the posterior ``p(theta | D) ∝ p(D | theta) p(theta)`` of a data set of size
    ``N``, whose score at head ``i`` is estimated from the minibatch-mean loss gradient ``G``:
    ``S_i = -N G_i + grad log p(theta_i)``. Then

    * SVGD: ``Ĝ = -epsilon * phi``, so plain SGD with learning rate ``lr`` performs the SVGD update
      ``theta <- theta + lr * epsilon * phi`` (Liu & Wang 2016, eq. 7);
    * SPOS: ``Ĝ = -epsilon (S / beta + phi) - sqrt(2 epsilon / (beta lr)) xi``, so plain SGD performs
      ``theta <- theta + e (S / beta + phi) + sqrt(2 e / beta) xi`` with ``e = lr * epsilon``: the
      SPOS update of Zhang et al. (2020, eq. 4) in the core's convention
      (:func:`particlesampling.samplers.spos`).

Paper preset (``preset="an2020"``), exactly the authors' fairseq trainer (DESIGN §2)
    Q, K and V separate, RBF kernel, ``m`` = lower median of all ``M^2`` squared distances,
    ``sigma^2 = m / (2 log(M + 1))`` (core bandwidth ``"an2020"``, ``h = 2 sigma^2``), and

    * SVGD: ``Ĝ = epsilon (1/M) [K G - alpha R]``;
    * SPOS: ``Ĝ = epsilon {(1/M) [K G - alpha R] + beta G - sqrt(2 beta / epsilon) c xi}``,
      ``c = median |G|`` (lower median over the group's ``M x P`` entries).

    With ``S = -G`` the SVGD form is ``-epsilon * phi`` with repulsion ``alpha``: the principled mode
    with ``N = 1``, a flat prior and repulsion ``alpha``. Its SPOS form is the principled SPOS with
    ``N = 1``, flat prior, ``1/beta_principled = beta``, the optimizer's ``lr`` taken as 1, and the
    noise multiplied by the heuristic scale ``c``.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from particlesampling import get_bandwidth, get_kernel, stein_direction_with_info
from particlesampling._backend import lower_median
from particlesampling.stein import SteinInfo

from .noise import StepNoise
from .particles import HeadParticles, ParticleGroup

__all__ = ["RepulsiveHeads", "ApplyInfo", "NonFiniteGradientError", "PRESETS", "METHODS"]

METHODS = ("svgd", "spos")
PRESETS = ("an2020",)
_ON_NONFINITE = ("raise", "skip")
_HALF = (torch.float16, torch.bfloat16)

#: options a preset fixes; passing them together with the preset is an error
_AN2020_FIXED = dict(particles="separate", roles=("q", "k", "v"), include_output=False, include_bias=False,
                     kernel="rbf", bandwidth="an2020", dataset_size=1, prior=None, lr=None, repulsion=None)


class NonFiniteGradientError(FloatingPointError):
    """A head gradient is NaN or infinite (raised by :meth:`RepulsiveHeads.apply`)."""


class ApplyInfo(NamedTuple):
    """What one :meth:`RepulsiveHeads.apply` did.

    Attributes
    ----------
    step : int
        Index of this step (0-based); the SPOS noise depends on it.
    groups : dict name -> particlesampling.stein.SteinInfo
        Per group: ``bandwidth`` ``h`` (0-d tensor, ``k = exp(-D2 / h)``), ``mean_kernel`` (mean
        off-diagonal ``K``), ``driving_norm``, ``repulsion_norm``. Tensors, no host sync.
    missing : tuple of str
        Groups left untouched because a gradient was ``None`` (module unused this step).
    nonfinite : tuple of str
        Groups with a non-finite gradient (only with ``on_nonfinite="skip"``; the whole step is then
        skipped and every gradient is left as it was).
    """

    step: int
    groups: Dict[str, SteinInfo]
    missing: Tuple[str, ...] = ()
    nonfinite: Tuple[str, ...] = ()

    @property
    def skipped(self) -> bool:
        """Whether the transform was skipped for non-finite gradients."""
        return bool(self.nonfinite)

    def summary(self) -> Dict[str, float]:
        """Means over groups of bandwidth and mean kernel value, as Python floats (host sync)."""
        if not self.groups:
            return {}
        infos = list(self.groups.values())
        return {
            "bandwidth": float(torch.stack([i.bandwidth.float().mean() for i in infos]).mean()),
            "mean_kernel": float(torch.stack([i.mean_kernel.float() for i in infos]).mean()),
        }


def _positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"expected {name} as a finite real number, received {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"expected {name} {'>= 0' if allow_zero else '> 0'}, received {value!r}")
    return float(value)


def _prior_fn(prior: Any) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """``None`` (flat), a prior standard deviation ``s > 0`` (N(0, s^2 I)) or a callable grad-log-prior."""
    if prior is None:
        return None
    if isinstance(prior, (int, float)) and not isinstance(prior, bool):
        var = _positive("prior (standard deviation of a N(0, s^2) prior)", prior) ** 2
        return lambda theta: theta * (-1.0 / var)
    if callable(prior):
        return prior
    raise TypeError(
        f"expected prior as None (flat), a positive standard deviation or a callable theta -> grad log p(theta), "
        f"received {type(prior).__name__}"
    )


class RepulsiveHeads:
    """Treat the heads of every attention module as SVGD/SPOS particles during ordinary training.

    Use it between ``loss.backward()`` and ``optimizer.step()``::

        heads = RepulsiveHeads(model, method="svgd", preset="an2020", alpha=0.01, epsilon=0.01)
        ...
        loss.backward()
        heads.apply()                      # or once: heads.attach(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)   # clipping after the adapter
        optimizer.step()

    Parameters
    ----------
    model : nn.Module
        Any model; attention modules are discovered (see :func:`attention_adapter.find_attention`).
        A ``DistributedDataParallel`` wrapper or the wrapped module both work.
    method : {"svgd", "spos"}
    preset : None or "an2020"
        ``"an2020"``: the authors' fairseq formula (module docstring). It fixes ``particles``,
        ``roles``, ``include_output``, ``include_bias``, ``kernel``, ``bandwidth``,
        ``dataset_size``, ``prior``, ``lr`` and ``repulsion`` (use ``alpha``); passing them is an error.
    alpha : float, optional
        Repulsion weight. Preset default 0.01; in principled mode an alias of ``repulsion``.
    epsilon : float, optional
        Multiplier of the transformed gradient (the fairseq ``--stepsize``). Default 0.01 with the
        preset, 1.0 otherwise.
    beta : float, optional
        SPOS weight. Preset: the weight of the ``beta G`` Langevin term (default 1.0). Principled
        mode: the inverse temperature of the core's SPOS (drift ``S / beta``, default 1.0).
    particles, roles, include_output, include_bias, layouts, layers :
        Particle choice and module selection, see :class:`attention_adapter.HeadParticles`.
        Defaults: ``"separate"``, ``("q", "k", "v")``, False, False, built-in layouts, all layers.
    kernel, bandwidth :
        Passed to the core (:func:`particlesampling.get_kernel`, :func:`particlesampling.get_bandwidth`).
        Defaults RBF and the core's default median rule (``"liu_wang"``).
    repulsion : float
        Weight of the repulsive term in principled mode (1.0 = SVGD proper).
    dataset_size : float
        ``N`` of the score ``-N G + grad log prior`` (principled mode; default 1). ``G`` must be the
        gradient of the *mean* per-example loss (negative log-likelihood) of the minibatch.
    prior : None, float or callable
        ``None``: flat; a number ``s``: ``N(0, s^2 I)`` on each head particle; a callable
        ``theta (M, P) -> grad log p(theta) (M, P)``.
    lr : float, optional
        Principled SPOS only: the learning rate the optimizer applies to these gradients (the noise
        scale depends on it). If omitted, read at every step from the optimizer given to
        :meth:`attach`.
    seed : int
        Base seed of the SPOS noise (see :mod:`attention_adapter.noise`).
    on_nonfinite : {"raise", "skip"}
        A NaN/inf head gradient raises :class:`NonFiniteGradientError` naming the module, or, with
        ``"skip"``, leaves every gradient untouched for that step (use with ``GradScaler``, which
        then skips the optimizer step). The check costs one device-to-host sync per step.
    check_finite : bool
        Set False to drop the check (and its sync); non-finite values then propagate.
    num_threads : int or None
        Intra-op CPU threads used inside :meth:`apply` when the heads are on the CPU (torch's setting
        is restored afterwards). Default 1: the transform is a few dozen small, memory-bound
        operations per group, for which OpenMP synchronisation costs more than it saves, and
        several times more on a busy machine. ``None`` keeps torch's setting.

    Attributes
    ----------
    heads : HeadParticles
        The particle groups (``heads.report()`` prints what was found).
    last_info : ApplyInfo or None
        Info of the most recent :meth:`apply`.
    """

    def __init__(self, model: nn.Module, *, method: str = "svgd", preset: Optional[str] = None,
                 alpha: Optional[float] = None, epsilon: Optional[float] = None, beta: Optional[float] = None,
                 particles: Optional[str] = None, roles=None, include_output: Optional[bool] = None,
                 include_bias: Optional[bool] = None, layouts=None, layers=None, kernel=None, bandwidth=None,
                 repulsion: Optional[float] = None, dataset_size: Optional[float] = None, prior=None,
                 lr: Optional[float] = None, seed: int = 0, on_nonfinite: str = "raise", check_finite: bool = True,
                 num_threads: Optional[int] = 1):
        if method not in METHODS:
            raise ValueError(f"expected method in {METHODS}, received {method!r}")
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"expected preset None or one of {PRESETS}, received {preset!r}")
        if on_nonfinite not in _ON_NONFINITE:
            raise ValueError(f"expected on_nonfinite in {_ON_NONFINITE}, received {on_nonfinite!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"expected seed as a non-negative int, received {seed!r}")
        if not isinstance(check_finite, bool):
            raise TypeError(f"expected check_finite as a bool, received {check_finite!r}")
        if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                        or num_threads < 1):
            raise ValueError(f"expected num_threads as a positive int or None, received {num_threads!r}")
        self.num_threads = num_threads
        given = dict(particles=particles, roles=roles, include_output=include_output, include_bias=include_bias,
                     kernel=kernel, bandwidth=bandwidth, dataset_size=dataset_size, prior=prior, lr=lr,
                     repulsion=repulsion)
        if preset == "an2020":
            clash = sorted(k for k, v in given.items() if v is not None)
            if clash:
                raise ValueError(
                    f"preset='an2020' fixes {', '.join(clash)}; received them explicitly. Use preset=None for a "
                    "custom configuration (the preset accepts alpha, epsilon, beta, layouts, layers, seed)."
                )
            given = dict(_AN2020_FIXED)
            rep = 0.01 if alpha is None else alpha
            eps = 0.01 if epsilon is None else epsilon
        else:
            if alpha is not None and repulsion is not None:
                raise ValueError("alpha is an alias of repulsion in principled mode; received both")
            rep = alpha if alpha is not None else (1.0 if repulsion is None else repulsion)
            eps = 1.0 if epsilon is None else epsilon
        self.method = method
        self.preset = preset
        self.repulsion = _positive("alpha/repulsion", rep, allow_zero=True)
        self.epsilon = _positive("epsilon", eps)
        self.beta = _positive("beta", 1.0 if beta is None else beta)
        if method == "svgd" and beta is not None:
            raise ValueError("beta is an SPOS option; received it with method='svgd'")
        self.dataset_size = _positive("dataset_size", 1 if given["dataset_size"] is None else given["dataset_size"])
        self._prior = _prior_fn(given["prior"])
        self.lr = None if given["lr"] is None else _positive("lr", given["lr"])
        if self.lr is not None and not (method == "spos" and preset is None):
            raise ValueError("lr is used only by the principled SPOS (method='spos', preset=None)")
        self._kernel = get_kernel(given["kernel"])
        self._bandwidth = get_bandwidth(given["bandwidth"])
        self.seed = seed
        self.on_nonfinite = on_nonfinite
        self.check_finite = check_finite
        self.heads = HeadParticles(
            model,
            particles=given["particles"] or "separate",
            roles=given["roles"] or ("q", "k", "v"),
            include_output=bool(given["include_output"]),
            include_bias=bool(given["include_bias"]),
            layouts=layouts,
            layers=layers,
        )
        self._step = 0
        self._optimizer_ref = None
        self._param_group_of: Dict[int, int] = {}
        self._last_grads: List[Tuple[nn.Parameter, Any, int]] = []
        self.last_info: Optional[ApplyInfo] = None

    # ------------------------------------------------------------------------------------------
    @property
    def groups(self) -> Tuple[ParticleGroup, ...]:
        return self.heads.groups

    @property
    def step(self) -> int:
        """Number of :meth:`apply` calls so far (the next step's index)."""
        return self._step

    def report(self) -> str:
        """Readable summary of the attention modules and particle groups (see ``HeadParticles.report``)."""
        return self.heads.report()

    def __repr__(self) -> str:
        return (f"RepulsiveHeads(method={self.method!r}, preset={self.preset!r}, groups={len(self.groups)}, "
                f"repulsion={self.repulsion}, epsilon={self.epsilon}, step={self._step})")

    # ------------------------------------------------------------------------------------------
    def _check_not_reapplied(self) -> None:
        for param, ref, version in self._last_grads:
            t = ref()
            if t is not None and t is param.grad and t._version == version:
                raise RuntimeError(
                    "RepulsiveHeads.apply() called twice on the same gradients (no backward in between): "
                    "the repulsion would be applied twice. Call it once per optimizer step (apply() or attach(), "
                    "not both)."
                )

    def _remember_grads(self, present) -> None:
        refs = []
        for g, _ in present:
            grad = g.blocks[0].param.grad
            refs.append((g.blocks[0].param, weakref.ref(grad), grad._version))
        self._last_grads = refs

    def _spos_lr(self, group: ParticleGroup) -> float:
        if self.lr is not None:
            return self.lr
        opt = self._optimizer_ref() if self._optimizer_ref is not None else None
        idx = self._param_group_of.get(id(group.blocks[0].param))
        if opt is None or idx is None:
            raise ValueError(
                "method='spos' in principled mode needs the optimizer's learning rate for the noise scale: "
                "pass lr=... or attach(optimizer); received neither"
            )
        return float(opt.param_groups[idx]["lr"])

    def _transform(self, group: ParticleGroup, grad: torch.Tensor, noise: Optional[StepNoise]):
        """Return (new gradient rows (M, P), SteinInfo) for one group."""
        cdt = torch.float32 if grad.dtype in _HALF else grad.dtype
        g = grad.to(cdt)
        x = group.gather("data").to(cdt)
        if self.dataset_size == 1.0:
            s = -g
        else:
            s = g * (-self.dataset_size)
        if self._prior is not None:
            s = s + self._prior(x)
        phi, info = stein_direction_with_info(x, s, kernel=self._kernel, bandwidth=self._bandwidth,
                                              repulsion=self.repulsion)
        eps = self.epsilon
        if self.method == "svgd":
            new = phi * (-eps)
        elif self.preset == "an2020":
            c = lower_median(g.abs())  # torch.median's lower median, by selection (core)
            xi = noise.draw(g)
            new = (g * self.beta - phi - xi * (c * math.sqrt(2.0 * self.beta / eps))) * eps
        else:
            lr = self._spos_lr(group)
            xi = noise.draw(g)
            new = (s * (1.0 / self.beta) + phi) * (-eps) - xi * math.sqrt(2.0 * eps / (self.beta * lr))
        return new, info

    def apply(self) -> ApplyInfo:
        """Rewrite the head gradients in place; call after ``backward()`` (and ``scaler.unscale_``).

        Returns
        -------
        ApplyInfo
            Per-group bandwidth and mean kernel value (0-d tensors), and which groups were missing a
            gradient or non-finite.

        Raises
        ------
        NonFiniteGradientError
            A head gradient is NaN/inf and ``on_nonfinite="raise"``; the message names the module.
        RuntimeError
            Called twice on the same gradients.
        """
        first = self.heads.groups[0].blocks[0].param
        if self.num_threads is None or first.device.type != "cpu":
            with torch.no_grad():
                return self._apply()
        saved = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        try:
            with torch.no_grad():
                return self._apply()
        finally:
            torch.set_num_threads(saved)

    def _apply(self) -> ApplyInfo:
        step = self._step
        present, missing = [], []
        for g in self.heads.groups:
            grad = g.gather("grad")
            if grad is None:
                missing.append(g.name)
            else:
                present.append((g, grad))
        self._check_not_reapplied()
        self._step += 1
        if self.check_finite and present:
            # min and max propagate NaN and show +-inf: one cheap reduction per group (isfinite().all()
            # is ~15x slower on CPU), then a single device-to-host sync for all groups
            dev = present[0][1].device
            extremes = torch.stack([torch.stack(torch.aminmax(grad)).to(dev) for _, grad in present])
            flags = torch.isfinite(extremes).all(dim=1)
            if not bool(flags.all()):
                bad = [g for (g, _), ok in zip(present, flags.tolist()) if not ok]
                if self.on_nonfinite == "raise":
                    names = ", ".join(f"{g.name!r} ({type(g.site.module).__name__} at {g.site.name or '<root>'!r})"
                                      for g in bad)
                    raise NonFiniteGradientError(
                        f"non-finite gradient in attention heads {names} at step {step}; pass on_nonfinite='skip' "
                        "to leave such steps untouched (e.g. under GradScaler)"
                    )
                info = ApplyInfo(step, {}, tuple(missing), tuple(g.name for g in bad))
                self.last_info = info
                return info
        noise = StepNoise(self.seed, step) if self.method == "spos" else None
        infos: Dict[str, SteinInfo] = {}
        for g, grad in present:
            new, infos[g.name] = self._transform(g, grad, noise)
            g.scatter_grad(new)
        self._remember_grads(present)
        info = ApplyInfo(step, infos, tuple(missing), ())
        self.last_info = info
        return info

    # ------------------------------------------------------------------------------------------
    def attach(self, optimizer: torch.optim.Optimizer):
        """Run :meth:`apply` as a pre-step hook of ``optimizer``.

        Under ``torch.amp.GradScaler``, ``scaler.step(optimizer)`` unscales the gradients and calls
        ``optimizer.step()`` only when they are finite, so the hook sees unscaled, finite gradients.
        If you clip gradients, call :meth:`apply` yourself before clipping instead of attaching.

        Returns
        -------
        torch.utils.hooks.RemovableHandle
            ``handle.remove()`` detaches the adapter.
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"expected a torch.optim.Optimizer, received {type(optimizer).__name__}")
        where: Dict[int, int] = {}
        for i, pg in enumerate(optimizer.param_groups):
            for p in pg["params"]:
                where[id(p)] = i
        heads = self.heads.parameters()
        covered = [p for p in heads if id(p) in where]
        if not covered:
            raise ValueError(
                "expected an optimizer that updates the attention heads, but none of the "
                f"{len(heads)} head parameters is among its parameters"
            )
        self._param_group_of = where
        self._optimizer_ref = weakref.ref(optimizer)

        def _hook(opt, args, kwargs):
            self.apply()

        return optimizer.register_step_pre_hook(_hook)

    # ------------------------------------------------------------------------------------------
    def _config(self) -> Dict[str, Any]:
        return {"method": self.method, "preset": self.preset, "groups": list(self.heads.names)}

    def state_dict(self) -> Dict[str, Any]:
        """``{"step", "seed", "method", "preset", "groups", "repulsion", "epsilon", "beta"}``.

        The SPOS noise is a function of ``(seed, step)``, so this is all the state there is.
        """
        return {"step": self._step, "seed": self.seed, "repulsion": self.repulsion, "epsilon": self.epsilon,
                "beta": self.beta, **self._config()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the step counter and seed; the configuration must match (else ValueError)."""
        if not isinstance(state, dict):
            raise TypeError(f"expected a state dict, received {type(state).__name__}")
        missing = [k for k in ("step", "seed", "method", "preset", "groups") if k not in state]
        if missing:
            raise ValueError(f"expected a RepulsiveHeads state dict with keys {missing}, received keys {sorted(state)}")
        mine = self._config()
        for key in ("method", "preset", "groups"):
            if state[key] != mine[key]:
                raise ValueError(f"state dict {key} {state[key]!r} does not match this adapter's {mine[key]!r}")
        step, seed = state["step"], state["seed"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"expected a non-negative int step, received {step!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"expected a non-negative int seed, received {seed!r}")
        self._step = step
        self.seed = seed
        self._last_grads = []
