"""Target posteriors with known answers.

``get_target(name, **kwargs)`` builds a target by name; ``list_targets()`` lists the names with a
one-line description.  Every target has ``name``, ``dim``, ``description``, ``normalised``,
``log_prob(x) -> (n,)`` and ``score(x) -> (n, d)`` on any Array-API namespace,
``initial_particles(n, seed, xp=..., dtype=..., device=...)`` and, where known, NumPy ``mean``,
``cov``, ``sample(n, seed)`` (exact), ``mode_weights`` / ``mode_fractions_of(x)`` (mixtures) and
``bounds`` (1-D/2-D, for plots).

Importing this package does not need scikit-learn; constructing the real-data targets
(``blinreg-diabetes``, ``blr-breast-cancer``, ``bnn-diabetes``) does (``pip install particlesampling[data]``).
:class:`BayesianNeuralNetwork` is the ``bnn-diabetes`` posterior on the user's own data ``(X, y)``.
"""

from __future__ import annotations

from typing import Any

from .banana import Banana
from .base import MixtureMixin, Target
from .bnn import BayesianNeuralNetwork, BNNDiabetes, BNNParams
from .gaussian import Gaussian, StandardNormal
from .mixtures import GaussianMixture, Mixture1D, Mixture2D
from .regression import BayesianLinearRegression, BayesianLogisticRegression, load_blr_reference
from .ring import Ring

__all__ = [
    "Target",
    "MixtureMixin",
    "Gaussian",
    "StandardNormal",
    "GaussianMixture",
    "Mixture1D",
    "Mixture2D",
    "Banana",
    "Ring",
    "BayesianLinearRegression",
    "BayesianLogisticRegression",
    "load_blr_reference",
    "BayesianNeuralNetwork",
    "BNNDiabetes",
    "BNNParams",
    "get_target",
    "list_targets",
    "TARGETS",
]

#: Registry: name -> target class (constructed with the keyword arguments of ``get_target``).
TARGETS: dict[str, type[Target]] = {
    cls.name: cls
    for cls in (
        Gaussian,
        StandardNormal,
        Mixture1D,
        Mixture2D,
        Banana,
        Ring,
        BayesianLinearRegression,
        BayesianLogisticRegression,
        BNNDiabetes,
    )
}


def list_targets() -> list[tuple[str, str]]:
    """Names and one-line descriptions of the registered targets.

    Returns
    -------
    list of (str, str)
    """
    return [(name, cls.description) for name, cls in TARGETS.items()]


def get_target(name: Any, **kwargs: Any) -> Target:
    """Build a registered target.

    Parameters
    ----------
    name : str or Target
        A name from :func:`list_targets` (case-insensitive; ``_`` may replace ``-``), or a
        ``Target`` instance, returned unchanged (then no keyword arguments are allowed).
    **kwargs
        Passed to the target's constructor (e.g. ``get_target("banana", b=0.1)``).

    Returns
    -------
    Target
    """
    if isinstance(name, Target):
        if kwargs:
            raise ValueError(f"get_target: keyword arguments {sorted(kwargs)} given with a Target instance")
        return name
    if not isinstance(name, str):
        raise TypeError(f"get_target: expected a target name (str) or a Target, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    if key not in TARGETS:
        raise ValueError(f"get_target: unknown target {name!r}; valid names: {', '.join(TARGETS)}")
    return TARGETS[key](**kwargs)
