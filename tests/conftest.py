"""Shared fixtures for the test suite.

``xp_backend`` runs a test once per (array library, dtype): NumPy, PyTorch on CPU and
``array_api_strict``, each in float32 and float64. The fixture value is a :class:`Backend` that
converts NumPy data into that library (``asarray``), back to NumPy (``to_numpy``), checks that an
output belongs to the library (``is_native``) and carries dtype-appropriate tolerances.

Tests marked ``gpu`` are skipped cleanly when ``torch.cuda.is_available()`` is false (or torch is
not installed).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np
import pytest

HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_STRICT = importlib.util.find_spec("array_api_strict") is not None

LIBRARIES = ["numpy"] + (["torch"] if HAVE_TORCH else []) + (["array_api_strict"] if HAVE_STRICT else [])
DTYPES = ["float32", "float64"]


def cuda_available() -> bool:
    if not HAVE_TORCH:
        return False
    import torch

    return bool(torch.cuda.is_available())


def to_numpy(a) -> np.ndarray:
    """Any supported array (NumPy, torch CPU/GPU, array_api_strict, 0-d or not) as a NumPy array."""
    if isinstance(a, (np.ndarray, np.generic, float, int)):
        return np.asarray(a)
    mod = type(a).__module__
    if mod.startswith("torch"):
        return a.detach().cpu().numpy()
    if mod.startswith("array_api_strict"):
        return np.from_dlpack(a)
    raise TypeError(f"cannot convert {type(a)!r} to numpy")


@dataclass(frozen=True)
class Backend:
    """One (library, dtype, device) combination."""

    name: str
    dtype_name: str
    device: str = "cpu"

    @property
    def id(self) -> str:
        return f"{self.name}-{self.dtype_name}" + ("" if self.device == "cpu" else f"-{self.device}")

    @property
    def xp(self):
        """The library's own module (numpy, torch or array_api_strict)."""
        if self.name == "numpy":
            return np
        if self.name == "torch":
            import torch

            return torch
        import array_api_strict

        return array_api_strict

    @property
    def dtype(self):
        return getattr(self.xp, self.dtype_name)

    @property
    def np_dtype(self):
        return np.dtype(self.dtype_name)

    @property
    def eps(self) -> float:
        return float(np.finfo(self.np_dtype).eps)

    @property
    def rtol(self) -> float:
        """Relative tolerance for results of O(n^2 d) arithmetic on well-conditioned data."""
        return 2e-4 if self.dtype_name == "float32" else 1e-10

    def asarray(self, a):
        """NumPy data -> an array of this library, dtype and device."""
        a = np.asarray(a, dtype=self.np_dtype)
        if self.name == "numpy":
            return a
        if self.name == "torch":
            import torch

            return torch.as_tensor(a.copy(), dtype=self.dtype, device=self.device)
        import array_api_strict

        return array_api_strict.asarray(a, dtype=self.dtype)

    def cast_np(self, a) -> np.ndarray:
        """Round NumPy data to this dtype and return it as float64 (for float64 references)."""
        return np.asarray(a, dtype=self.np_dtype).astype(np.float64)

    def to_numpy(self, a) -> np.ndarray:
        return to_numpy(a)

    def is_native(self, a) -> bool:
        """Whether ``a`` is an array (of any rank) of exactly this library."""
        if self.name == "numpy":
            return isinstance(a, np.ndarray)
        if self.name == "torch":
            import torch

            return isinstance(a, torch.Tensor)
        import array_api_strict

        return isinstance(a, array_api_strict._array_object.Array)

    def dtype_of(self, a) -> str:
        """Dtype name of an output array, as 'float32' / 'float64' / ..."""
        return str(a.dtype).split(".")[-1]

    def device_of(self, a) -> str:
        if self.name == "torch":
            return a.device.type
        return "cpu"

    def assert_close(self, got, expected, rtol=None, atol_scale=None, err_msg=""):
        """Compare ``got`` (any library) with a float64 NumPy reference.

        The absolute tolerance is relative to the reference's largest entry (``atol_scale``,
        defaulting to ``rtol``), so entries that cancel to near zero are judged on the right scale.
        """
        rtol = self.rtol if rtol is None else rtol
        atol_scale = rtol if atol_scale is None else atol_scale
        expected = np.asarray(expected, dtype=np.float64)
        scale = float(np.max(np.abs(expected))) if expected.size else 1.0
        np.testing.assert_allclose(
            self.to_numpy(got).astype(np.float64), expected, rtol=rtol, atol=atol_scale * max(scale, 1e-300),
            err_msg=err_msg,
        )


BACKENDS = [Backend(lib, dt) for lib in LIBRARIES for dt in DTYPES]


@pytest.fixture(params=BACKENDS, ids=[b.id for b in BACKENDS])
def xp_backend(request) -> Backend:
    """A :class:`Backend`: NumPy / torch CPU / array_api_strict x float32 / float64."""
    return request.param


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240531)


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def torch_one_thread():
    """One torch intra-op thread for the duration of a test, then the previous setting.

    Tiny models run faster on one thread, and the timing is then insensitive to other load on a
    shared machine (two spinning OpenMP threads on an oversubscribed 2-core box are ~20x slower).
    """
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
