"""Test support: the array libraries a test can run on here (NumPy, and torch where installed), and
float64 input in each of them."""

from __future__ import annotations

import numpy as np


def available_libs() -> list:
    """``["numpy"]``, plus ``"torch"`` where it imports."""
    libs = ["numpy"]
    try:
        import torch  # noqa: F401

        libs.append("torch")
    except ImportError:  # pragma: no cover
        pass
    return libs


def as_lib(lib: str, a):
    """``a`` as a float64 array of ``lib`` ("numpy" or "torch")."""
    if lib == "numpy":
        return np.asarray(a, dtype=np.float64)
    import torch

    return torch.as_tensor(np.asarray(a, dtype=np.float64))
