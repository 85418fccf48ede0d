"""Experiments on real data behind ``docs/evidence.md``: the UCI Bayesian-neural-network benchmark of
Liu & Wang (2016), variance collapse (Ba et al., 2022) and Bayesian logistic regression on breast cancer.

Part of the repository's ``benchmarks/``, not of the installed library: run everything with
``python benchmarks/run_evidence.py`` from a checkout. The modules need PyTorch (``uci_bnn``,
``variance_collapse``, ``logistic``), scikit-learn (``logistic``) and matplotlib (``report``'s plots).
The BNN posterior itself is the library's target :class:`particlesampling.targets.BayesianNeuralNetwork`.
"""

__all__ = ["uci", "uci_bnn", "variance_collapse", "logistic", "report"]
