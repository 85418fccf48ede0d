"""Common interface of the target distributions.

A target is a probability density ``p`` on ``R^d`` known up to (or including) its normalising
constant.  Every target evaluates, for an ``(n, d)`` array ``x`` of particles (one per row) of any
Array-API namespace (NumPy, PyTorch on CPU or GPU, ``array_api_strict``),

* ``log_prob(x) -> (n,)``: ``log p(x_i)``; each class states whether it is normalised;
* ``score(x) -> (n, d)``: ``∇ log p(x_i)``, in closed form (no automatic differentiation),

and returns arrays of the same namespace, dtype and device as ``x``.  Known answers (``mean``,
``cov``, exact ``sample``) are NumPy float64 because they are reference values, computed once on
the host.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from .._backend import device_of, namespace, namespace_of_module, to_numpy
from .. import validation

__all__ = ["Target", "MixtureMixin"]


class Target(ABC):
    """Base class of target densities with known answers.

    Subclasses set the class attributes ``name`` and ``description``, the instance attribute
    ``dim`` and implement ``_log_prob(xp, x)`` and ``_score(xp, x)`` (inputs already validated).

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"banana"``.
    description : str
        One line, shown by ``list_targets()``.
    dim : int
        Dimension ``d`` of the sample space.
    normalised : bool
        Whether ``log_prob`` includes the normalising constant.
    mean : numpy.ndarray of shape (d,) or None
        Exact mean where known.
    cov : numpy.ndarray of shape (d, d) or None
        Exact covariance where known.
    bounds : numpy.ndarray of shape (d, 2) or None
        For 1-D and 2-D targets: a box ``[lo, hi]`` per coordinate that contains essentially
        all of the mass (for plots).  ``None`` for higher dimensions.
    """

    name: str = ""
    description: str = ""
    normalised: bool = False
    dim: int
    mean: np.ndarray | None = None
    cov: np.ndarray | None = None
    bounds: np.ndarray | None = None

    # ------------------------------------------------------------------ validation / constants
    def _check(self, x: Any) -> Any:
        """Validate ``x`` as ``(n, dim)`` floating array; return its namespace."""
        try:
            xp = namespace(x)
        except TypeError:
            raise TypeError(
                f"{self.name}: expected an (n, {self.dim}) floating array (numpy, torch, "
                f"array_api_strict, ...), got {type(x).__name__}"
            ) from None
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"{self.name}: expected particles of shape (n, {self.dim}), got shape "
                f"{tuple(x.shape)}"
            )
        if not xp.isdtype(x.dtype, "real floating"):
            raise TypeError(
                f"{self.name}: expected a real floating dtype (float32 or float64), got {x.dtype}"
            )
        return xp

    def _const(self, xp: Any, x: Any, key: str, value: Any) -> Any:
        """``value`` (NumPy/Python) as an array of ``x``'s namespace, dtype and device (cached)."""
        device = device_of(x)
        try:
            cache_key = (key, xp, x.dtype, device)
            hash(cache_key)
        except TypeError:  # unhashable device or dtype: no caching
            cache_key = None
        cache = self.__dict__.setdefault("_const_cache", {})
        if cache_key is not None and cache_key in cache:
            return cache[cache_key]
        arr = xp.asarray(np.asarray(value, dtype=np.float64), dtype=x.dtype, device=device)
        if cache_key is not None:
            cache[cache_key] = arr
        return arr

    # ------------------------------------------------------------------ public evaluation
    def log_prob(self, x: Any) -> Any:
        """Log density at each particle.

        Parameters
        ----------
        x : array of shape (n, d)
            Particles, one per row; any Array-API namespace, float32 or float64.

        Returns
        -------
        array of shape (n,)
            ``log p(x_i)`` in ``x``'s namespace, dtype and device (normalised iff
            ``self.normalised``).
        """
        xp = self._check(x)
        return self._log_prob(xp, x)

    def score(self, x: Any) -> Any:
        """Score ``∇_x log p`` at each particle, in closed form.

        Parameters
        ----------
        x : array of shape (n, d)
            Particles, one per row; any Array-API namespace, float32 or float64.

        Returns
        -------
        array of shape (n, d)
            ``∇ log p(x_i)`` in ``x``'s namespace, dtype and device.
        """
        xp = self._check(x)
        return self._score(xp, x)

    def __call__(self, x: Any) -> Any:
        """Alias of :meth:`score`, so a target can be passed as ``score_fn`` to a sampler."""
        return self.score(x)

    @abstractmethod
    def _log_prob(self, xp: Any, x: Any) -> Any:  # pragma: no cover - abstract
        ...

    @abstractmethod
    def _score(self, xp: Any, x: Any) -> Any:  # pragma: no cover - abstract
        ...

    # ------------------------------------------------------------------ initial particles
    def _initial_numpy(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Default initial distribution N(0, I_d); subclasses document their own."""
        return rng.standard_normal((n, self.dim))

    def initial_particles(
        self, n: int, seed: int, *, xp: Any = None, dtype: Any = None, device: Any = None
    ) -> Any:
        """Initial particles from the target's documented initial distribution.

        Generated with ``numpy.random.Generator(PCG64(seed))`` in float64, then converted, so the
        values do not depend on the namespace (up to rounding to ``dtype``).

        Parameters
        ----------
        n : int
            Number of particles, ``n >= 1``.
        seed : int
            Non-negative seed.
        xp : module or str, optional
            Namespace of the result (``numpy`` by default, ``torch``, ``array_api_strict``).
        dtype : dtype or str, optional
            ``float64`` by default; a dtype object of ``xp`` or its name.
        device : optional
            Device of the result (e.g. ``"cuda"`` for torch); the namespace default if omitted.

        Returns
        -------
        array of shape (n, d)
        """
        n = _check_count(n, "n")
        seed = _check_seed(seed)
        ns = namespace_of_module(xp)
        arr = self._initial_numpy(np.random.default_rng(seed), n)
        return _convert(arr, ns, dtype, device)

    # ------------------------------------------------------------------ exact samples
    @property
    def has_exact_sampler(self) -> bool:
        """Whether :meth:`sample` draws exact samples."""
        return type(self)._sample_numpy is not Target._sample_numpy

    def _sample_numpy(self, rng: np.random.Generator, n: int) -> np.ndarray:
        raise NotImplementedError(f"{self.name}: exact sampling is not available for this target")

    def sample(self, n: int, seed: int) -> np.ndarray:
        """Exact independent samples from the target (NumPy float64).

        Parameters
        ----------
        n : int
            Number of samples, ``n >= 1``.
        seed : int
            Non-negative seed of ``numpy.random.default_rng``.

        Returns
        -------
        numpy.ndarray of shape (n, d)

        Raises
        ------
        NotImplementedError
            If the target has no exact sampler (see ``has_exact_sampler``).
        """
        n = _check_count(n, "n")
        seed = _check_seed(seed)
        return self._sample_numpy(np.random.default_rng(seed), n)

    # ------------------------------------------------------------------ plotting helper
    def density_grid(self, num: int = 200, bounds: Any = None) -> tuple:
        """Log density on a regular grid, for contour plots of 1-D and 2-D targets.

        Parameters
        ----------
        num : int
            Grid points per axis.
        bounds : array-like of shape (d, 2), optional
            Box to cover; ``self.bounds`` by default.

        Returns
        -------
        tuple
            1-D: ``(xs, logp)`` with shapes ``(num,)``, ``(num,)``.
            2-D: ``(xs, ys, logp)`` with ``logp`` of shape ``(num, num)`` indexed ``[iy, ix]``
            (ready for ``matplotlib.pyplot.contour(xs, ys, logp)``).
        """
        if self.dim not in (1, 2):
            raise ValueError(f"{self.name}: density_grid needs a 1-D or 2-D target, got dim={self.dim}")
        num = _check_count(num, "num")
        box = self.bounds if bounds is None else np.asarray(bounds, dtype=np.float64)
        if box is None or box.shape != (self.dim, 2):
            raise ValueError(
                f"{self.name}: bounds must have shape ({self.dim}, 2), got "
                f"{None if box is None else box.shape}"
            )
        axes = [np.linspace(lo, hi, num) for lo, hi in box]
        if self.dim == 1:
            return axes[0], self.log_prob(axes[0][:, None])
        gx, gy = np.meshgrid(axes[0], axes[1], indexing="xy")
        pts = np.stack([gx.ravel(), gy.ravel()], axis=1)
        return axes[0], axes[1], self.log_prob(pts).reshape(num, num)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


class MixtureMixin:
    """Mode-weight bookkeeping for mixture targets.

    Subclasses provide ``mode_weights`` (NumPy ``(K,)``, the true component weights) and
    ``_responsibilities_numpy(x) -> (n, K)``.
    """

    mode_weights: np.ndarray

    def mode_fractions_of(self, x: Any) -> np.ndarray:
        """Fraction of particles assigned to each mixture component.

        Each particle is assigned to the component of highest responsibility (posterior
        component probability ``w_k N_k(x) / Σ_j w_j N_j(x)``).  For exact samples the result
        estimates the true weights up to the overlap of the components (misassigned mass), which
        is small when the components are well separated.

        Parameters
        ----------
        x : array of shape (n, d)
            Particles of any namespace.

        Returns
        -------
        numpy.ndarray of shape (K,)
            Fractions summing to 1.
        """
        self._check(x)  # type: ignore[attr-defined]
        xn = np.asarray(to_numpy(x), dtype=np.float64)
        if xn.shape[0] == 0:
            raise ValueError(f"{self.name}: mode_fractions_of needs at least one particle, got 0")  # type: ignore[attr-defined]
        labels = np.argmax(self._responsibilities_numpy(xn), axis=1)
        counts = np.bincount(labels, minlength=self.mode_weights.shape[0])
        return counts / xn.shape[0]

    def _responsibilities_numpy(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


def _check_count(n: Any, name: str) -> int:
    return validation.check_int(name, n, minimum=1)


def _check_seed(seed: Any) -> int:
    return validation.check_int("seed", seed, minimum=0)


def _convert(arr: np.ndarray, ns: Any, dtype: Any, device: Any) -> Any:
    """NumPy float64 ``arr`` -> namespace ``ns`` with ``dtype`` (default float64) on ``device``."""
    if dtype is None:
        dtype = ns.float64
    elif isinstance(dtype, str):
        if not hasattr(ns, dtype):
            raise ValueError(f"dtype: {dtype!r} is not a dtype of {ns.__name__}")
        dtype = getattr(ns, dtype)
    try:
        floating = ns.isdtype(dtype, "real floating")
    except (TypeError, ValueError):
        floating = False
    if not floating:
        raise TypeError(f"dtype: expected a real floating dtype (float32 or float64), got {dtype}")
    if device is None:
        return ns.asarray(arr, dtype=dtype)
    return ns.asarray(arr, dtype=dtype, device=device)
