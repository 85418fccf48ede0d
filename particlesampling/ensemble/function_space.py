"""Function-space SVGD for a :class:`~particlesampling.ensemble.ParticleEnsemble`.

Weight space is a poor place to compare whole networks (permutation symmetries make distant weights
compute the same function); D'Angelo & Fortuin (NeurIPS 2021, "Repulsive Deep Ensembles are
Bayesian") and Wang, Ren, Zhu & Zhang (ICLR 2019) put the kernel on the models' *outputs* instead.
With ``f_i`` model ``i``'s outputs on the current batch (optionally plus extra inputs: fixed points
or noise images, as D'Angelo & Fortuin do), ``K`` and ``R_f`` the core's Gram matrix and repulsion of
the ``n x m`` outputs (:func:`particlesampling.function_space.function_space_direction`, which pulls
``R_f`` back to the weights with **one** vector-Jacobian product, ``J_i^T (R_f)_i``), the drift is

* ``driving="kernel"`` (the hybrid form of function-space SVGD)::

      phi_i = (1/n) [ sum_j K_ij s_j + r J_i^T (R_f)_i ]

* ``driving="own"`` (a repulsive deep ensemble: each model's own score plus the repulsion)::

      phi_i = s_i + (r / n) J_i^T (R_f)_i

with ``s_i`` the weight-space scores of the N/B-scaled posterior (the likelihood's own parameters
receive no repulsion: the outputs do not depend on them). ``r`` (``repulsion``) is the one knob:
at its natural value 1 the repulsion is tiny next to the N-scaled scores, so it is tuned like any
other setting (on development data).
"""

from __future__ import annotations

import torch

from ..function_space import function_space_direction
from .ensemble import ParticleEnsemble, Scores, _as_args
from .updates import EnsembleUpdate, UpdateInfo, _rms

__all__ = ["FunctionSpaceSVGD"]


class FunctionSpaceSVGD(EnsembleUpdate):
    """Function-space SVGD (module docstring); deterministic (no noise).

    Parameters
    ----------
    ensemble : ParticleEnsemble
    kernel, bandwidth : as for :func:`particlesampling.stein_direction`, on the outputs (default RBF
        with the Liu-Wang median).
    repulsion : float
        ``r``, the weight of the function-space repulsion.
    driving : ``"kernel"`` or ``"own"``
        The data term: kernel-smoothed scores (SVGD) or each model's own score.
    extra_inputs : tensor or callable ``step -> tensor``, optional
        Inputs appended to every batch for the kernel only (their outputs enter ``f``, not the
        likelihood): e.g. a fixed set of unlabelled rows, or fresh noise each step. In training
        mode batch norm sees them too.
    """

    name = "fsvgd"

    def __init__(self, ensemble: ParticleEnsemble, *, kernel=None, bandwidth=None, repulsion: float = 1.0,
                 driving: str = "kernel", extra_inputs=None, seed: int = 0) -> None:
        super().__init__(ensemble, seed=seed)
        if driving not in ("kernel", "own"):
            raise ValueError(f"expected driving 'kernel' or 'own', received {driving!r}")
        if extra_inputs is not None and not (isinstance(extra_inputs, torch.Tensor) or callable(extra_inputs)):
            raise TypeError(f"expected extra_inputs as a tensor, a callable step -> tensor or None, received "
                            f"{type(extra_inputs).__name__}")
        self.kernel, self.bandwidth, self.repulsion = kernel, bandwidth, repulsion
        self.driving, self.extra_inputs = driving, extra_inputs

    def _extra(self):
        e = self.extra_inputs
        return e(self.step) if callable(e) and not isinstance(e, torch.Tensor) else e

    def drift(self, inputs, targets, particles=None):
        ens = self.ensemble
        x = (ens.particles if particles is None else ens.check_particles(particles)).detach().requires_grad_(True)
        args = _as_args(inputs)
        extra = self._extra()
        B = targets.shape[0]
        if extra is not None:
            if len(args) != 1:
                raise ValueError("extra_inputs needs a model with one input tensor")
            args = (torch.cat([args[0], extra.to(args[0].dtype)], dim=0),)
        with torch.enable_grad():
            out = ens(*args, particles=x)
            lp = ens.log_posterior(inputs, targets, x, outputs=out[:, :B])
            (s,) = torch.autograd.grad(lp.sum(), x, retain_graph=True)
            if not bool(torch.isfinite(s).all()):
                i = int(torch.nonzero(~torch.isfinite(s).all(1))[0, 0])
                raise FloatingPointError(f"non-finite score at particle {i}")
            step = function_space_direction(out, [x], None, kernel=self.kernel, bandwidth=self.bandwidth,
                                            repulsion=self.repulsion)
        pulled = step.grads[0]  # (n, D): r J_i^T (R_f)_i / n; zero in the columns the outputs do not reach
        n = x.shape[0]
        if self.driving == "kernel":
            d = step.gram.to(s.dtype) @ s / n + pulled
        else:
            d = s + pulled
        self.last_scores = Scores(s, lp.detach(), out[:, :B].detach())
        return d, UpdateInfo(lp.detach(), _rms(d), _rms(s), step.info.bandwidth, step.info.mean_kernel)
