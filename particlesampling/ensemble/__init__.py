"""Any PyTorch model as particles: ensembles of ``nn.Module`` weights sampled with SVGD, SPOS, SGLD.

torch-only; import it explicitly (``import particlesampling`` does not import torch)::

    import torch
    from particlesampling.ensemble import ParticleEnsemble, SVGD

    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    ens = ParticleEnsemble(net, 10, n_data=len(X), likelihood="gaussian-learnt")
    update = SVGD(ens)
    opt = torch.optim.Adam(ens.parameters(), lr=1e-3)
    for xb, yb in batches:
        opt.zero_grad()
        update.fill_grad(xb, yb)      # every particle's score in one backward, the core's Stein direction
        opt.step()
    mean = ens.predict(X_test).mean(0)

:class:`ParticleEnsemble` stacks ``n`` initialisations (:mod:`._stack`), evaluates them in one
batched forward (``functional_call`` under ``vmap``; an ``nn.Sequential`` MLP as batched GEMMs,
:mod:`._batched`) and scores them in one backward; the likelihoods and priors are in :mod:`.models`;
the updates (deep ensemble, SVGD, SPOS, SGLD) in :mod:`.updates`, function-space SVGD in
:mod:`.function_space` (on :mod:`particlesampling.function_space`); predictive entropy and mutual information in :mod:`.predictive`.
"""

from ._stack import ParameterLayout, StackingError
from .ensemble import ParticleEnsemble, Scores
from .function_space import FunctionSpaceSVGD
from .models import (
    CategoricalLikelihood,
    GaussianLikelihood,
    GaussianPrior,
    HierarchicalGaussianPrior,
    Likelihood,
    Prior,
    get_likelihood,
)
from .predictive import expected_entropy, gaussian_predictive, mutual_information, predictive_entropy, predictive_mean
from .updates import SGLD, SPOS, SVGD, CoreStepper, DeepEnsemble, EnsembleUpdate, UpdateInfo

#: update classes by name
UPDATES = {"ensemble": DeepEnsemble, "svgd": SVGD, "spos": SPOS, "sgld": SGLD, "fsvgd": FunctionSpaceSVGD}


def get_update(name: str, ensemble: ParticleEnsemble, **options) -> EnsembleUpdate:
    """An update by name (``"ensemble"``, ``"svgd"``, ``"spos"``, ``"sgld"``, ``"fsvgd"``); ``options`` go to
    its constructor."""
    key = str(name).lower()
    if key not in UPDATES:
        raise ValueError(f"unknown update {name!r}; expected one of {sorted(UPDATES)}")
    return UPDATES[key](ensemble, **options)


__all__ = ["ParticleEnsemble", "Scores", "StackingError", "ParameterLayout", "Likelihood", "GaussianLikelihood",
           "CategoricalLikelihood", "get_likelihood", "Prior", "GaussianPrior", "HierarchicalGaussianPrior",
           "EnsembleUpdate", "DeepEnsemble", "SVGD", "FunctionSpaceSVGD", "SPOS", "SGLD", "CoreStepper", "UpdateInfo", "get_update", "UPDATES",
           "predictive_mean", "predictive_entropy", "expected_entropy", "mutual_information",
           "gaussian_predictive"]
