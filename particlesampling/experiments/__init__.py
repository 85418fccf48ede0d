"""Experiments on real data: the UCI Bayesian-neural-network benchmark of Liu & Wang (2016),
variance collapse (Ba et al., 2022) and Bayesian logistic regression on breast cancer.

These modules need PyTorch (``bnn``, ``uci_bnn``), SciPy/scikit-learn (``logistic``) and matplotlib
(``report``); the core package imports without them. Run everything with
``python benchmarks/run_evidence.py``.
"""

__all__ = ["uci", "bnn", "uci_bnn", "variance_collapse", "logistic", "report"]
