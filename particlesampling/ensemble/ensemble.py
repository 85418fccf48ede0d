"""``ParticleEnsemble``: ``n`` copies of a user's ``nn.Module`` as the ``(n, D)`` particles of the core."""

from __future__ import annotations

import copy
import numbers
from typing import Any, NamedTuple

import torch
from torch import nn

from ._batched import sequential_plan
from ._stack import ParameterLayout, batched_forward, build_copies, stack_copies
from .models import GaussianPrior, Likelihood, Prior, get_likelihood

__all__ = ["ParticleEnsemble", "Scores"]


class Scores(NamedTuple):
    """One evaluation of the ensemble's log posterior and its gradient."""

    scores: Any  #: (n, D) gradient of each particle's log posterior in its own particle
    log_posterior: Any  #: (n,) the (N/B-scaled) log posterior, detached
    outputs: Any  #: (n, B, ...) the models' outputs on the batch, detached


def _as_args(inputs):
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


class ParticleEnsemble(nn.Module):
    """``n`` independently initialised copies of one ``nn.Module``, stacked as particles.

    The particles are one ``(n, D)`` parameter, :attr:`particles`: row ``i`` holds model ``i``'s
    ``P`` trainable weights (``named_parameters()`` order, each flattened row-major), then the
    likelihood's per-particle parameters (a learnt log noise precision), then the prior's (a learnt
    log weight precision); ``D = P + extras``. A forward pass runs the ``n`` models in one batched
    call (:func:`torch.func.functional_call` under :func:`torch.func.vmap`); :meth:`scores` gives
    every particle's score with one backward pass. Buffers (batch-norm statistics) and frozen
    parameters are stacked per particle, as buffers of this module.

    Parameters
    ----------
    module : nn.Module or callable
        The model, or a factory returning a fresh one. A module is deep-copied ``n`` times and
        re-initialised by its sub-modules' ``reset_parameters()`` under seeds ``seed, seed + 1, ...``;
        a factory is called under those seeds. A module that cannot be stacked raises
        :class:`~particlesampling.ensemble.StackingError` naming the parameter and the reason.
    n_particles : int >= 1
    likelihood : str or Likelihood
        ``"gaussian"`` (unit noise), ``"gaussian-learnt"``, ``"categorical"`` or an instance
        (:class:`~particlesampling.ensemble.GaussianLikelihood`, ...).
    prior : Prior, optional
        Default :class:`~particlesampling.ensemble.GaussianPrior` with scale 1.
    n_data : int >= 1
        ``N``, the number of training rows: the log likelihood of a batch of ``B`` rows is scaled
        by ``N / B``.
    seed : int
        Seed of the initialisations (torch's global random state is left unchanged).
    direct_mlp : bool
        Evaluate an ``nn.Sequential`` of ``Linear``, ``Flatten`` and element-wise activations with
        one batched GEMM per layer (:mod:`particlesampling.ensemble._batched`) instead of
        ``functional_call`` under ``vmap``: the same function; on the UCI network one score evaluation
        took 1.45x less time (``python benchmarks/bench_ensemble_speed.py``).
        Other modules always run under ``vmap``; ``False`` forces ``vmap`` for every module.
    """

    def __init__(self, module, n_particles: int, *, n_data: int, likelihood="gaussian", prior: Prior | None = None,
                 seed: int = 0, direct_mlp: bool = True) -> None:
        super().__init__()
        for name, v, low in (("n_particles", n_particles, 1), ("n_data", n_data, 1), ("seed", seed, 0)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
                raise ValueError(f"expected {name} as an integer >= {low}, received {v!r}")
        self.likelihood: Likelihood = get_likelihood(likelihood)
        self.prior: Prior = GaussianPrior(1.0) if prior is None else prior
        if not isinstance(self.prior, Prior):
            raise TypeError(f"expected prior to be a Prior instance or None, received {type(self.prior).__name__}")
        self.n_data = int(n_data)
        copies = build_copies(module, int(n_particles), int(seed))
        layout, weights, fixed = stack_copies(copies)
        self.layout: ParameterLayout = layout
        # the template runs under functional_call with every tensor supplied: keep it on the meta device
        # and outside the module registry (its parameters are not this module's)
        object.__setattr__(self, "_template", copy.deepcopy(copies[0]).to("meta"))
        # an MLP (nn.Sequential of Linear, Flatten, element-wise activations) runs as batched GEMMs
        plan = sequential_plan(self._template, layout.names + tuple(fixed)) if direct_mlp else None
        object.__setattr__(self, "_plan", plan)
        extras = torch.cat([self.likelihood.init_params(len(copies), weights),
                            self.prior.init_params(weights)], dim=1).to(weights.dtype)
        self.particles = nn.Parameter(torch.cat([weights, extras], dim=1))
        self._fixed_names: dict[str, str] = {}
        for name, value in fixed.items():
            attr = "stacked_" + name.replace(".", "_")
            if attr in self._fixed_names.values() or hasattr(self, attr):
                raise ValueError(f"buffer {name!r} collides with another stacked name ({attr!r})")
            self._fixed_names[name] = attr
            self.register_buffer(attr, value)

    # ----------------------------------------------------------------- layout
    @property
    def n_particles(self) -> int:
        return self.particles.shape[0]

    @property
    def num_weights(self) -> int:
        """``P``: network weights per particle."""
        return self.layout.size

    @property
    def dim(self) -> int:
        """``D``: columns of the particles (weights and the likelihood's and prior's parameters)."""
        return self.particles.shape[1]

    @property
    def column_names(self) -> tuple:
        """What the extra columns after the ``P`` weights are."""
        return self.likelihood.param_names + self.prior.param_names

    def split(self, particles=None):
        """``(weights (n, P), likelihood params (n, k_l), prior params (n, k_p))`` views."""
        x = self.particles if particles is None else particles
        P, kl = self.num_weights, self.likelihood.num_params
        return x[:, :P], x[:, P: P + kl], x[:, P + kl:]

    def model_parameters(self, i: int, particles=None) -> dict:
        """Model ``i``'s parameters ``{name: tensor}`` (views of the particles)."""
        return self.layout.unflatten(self.split(particles)[0][i])

    def stacked_buffers(self) -> dict:
        """The per-particle buffers and frozen parameters ``{module name: (n, ...)}``."""
        return {name: getattr(self, attr) for name, attr in self._fixed_names.items()}

    def train(self, mode: bool = True):
        super().train(mode)
        self._template.train(mode)
        return self

    # ----------------------------------------------------------------- forward and scores
    def check_particles(self, particles):
        if not isinstance(particles, torch.Tensor):
            raise TypeError(f"expected particles as a torch.Tensor, received {type(particles).__name__}")
        if tuple(particles.shape) != (self.n_particles, self.dim):
            raise ValueError(f"expected particles of shape ({self.n_particles}, {self.dim}), received "
                             f"{tuple(particles.shape)}")
        return particles

    def forward(self, *args, particles=None, **kwargs):
        """Outputs ``(n, ...)`` of the ``n`` models on the same inputs, in one batched pass.

        ``particles`` (default :attr:`particles`) may be any ``(n, D)`` tensor, differentiable or not.
        In training mode batch-norm statistics of each particle are updated in place.
        """
        x = self.particles if particles is None else self.check_particles(particles)
        return batched_forward(self._template, self.layout, x[:, : self.num_weights], self.stacked_buffers(),
                               args, kwargs, plan=self._plan)

    def log_posterior(self, inputs, targets, particles=None, *, outputs=None):
        """``(n,)`` log posterior of each particle on a batch (module docstring of
        :mod:`particlesampling.ensemble.models`): the batch's log likelihood scaled by ``N / B``.

        ``inputs``: the model's input tensor, or a tuple of its positional arguments; ``targets``
        ``(B, ...)``. ``outputs`` may pass the models' outputs already computed at ``particles``.
        """
        x = self.particles if particles is None else self.check_particles(particles)
        if outputs is None:
            outputs = self(*_as_args(inputs), particles=x)
        B = targets.shape[0]
        if B < 1:
            raise ValueError("expected a batch of at least one row, received 0 targets")
        w, lik_p, prior_p = self.split(x)
        loglik = self.likelihood.log_prob(outputs, targets, lik_p).sum(1)
        return (self.n_data / B) * loglik + self.likelihood.log_prior(lik_p) + self.prior.log_prob(w, prior_p)

    def scores(self, inputs, targets, particles=None) -> Scores:
        """Every particle's score ``grad log p_i`` ``(n, D)`` from one forward and one backward pass.

        The particles are independent, so the gradient of ``sum_i log p_i`` in the ``(n, D)``
        particles is the stack of the ``n`` scores. Non-finite scores raise ``FloatingPointError``
        naming the first particle.
        """
        x = self.particles if particles is None else self.check_particles(particles)
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            outputs = self(*_as_args(inputs), particles=x)
            lp = self.log_posterior(inputs, targets, x, outputs=outputs)
            (s,) = torch.autograd.grad(lp.sum(), x)
        bad = ~torch.isfinite(s).all(1)
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0, 0])
            raise FloatingPointError(f"non-finite score at particle {i} (log posterior {float(lp[i].detach())})")
        return Scores(s, lp.detach(), outputs.detach())

    def score_fn(self, inputs, targets):
        """``particles -> scores`` on a fixed batch: the ``score_fn`` of the core samplers."""
        return lambda particles: self.scores(inputs, targets, particles).scores

    # ----------------------------------------------------------------- predictions
    @torch.no_grad()
    def predict(self, *args, **kwargs):
        """Per-particle outputs ``(n, B, ...)`` without gradients, in the current mode (call
        ``.eval()`` first for batch norm's running statistics and no dropout)."""
        return self(*args, **kwargs)

    @torch.no_grad()
    def predict_proba(self, *args, **kwargs):
        """Per-particle class probabilities ``(n, B, C)`` (softmax of the outputs)."""
        return torch.softmax(self(*args, **kwargs), dim=-1)
