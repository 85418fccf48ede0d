"""Every Python example of the README runs as written, in order, in one namespace (as a reader pastes them)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(_python_blocks()) >= 3


@pytest.mark.slow
def test_readme_examples_run(torch_one_thread):
    namespace: dict = {}
    for block in _python_blocks():
        exec(compile(block, "README.md", "exec"), namespace)
    # the first example's claim: SVGD's particle mean is near the target's
    np.testing.assert_allclose(namespace["state"].particles.mean(0), namespace["target"].mean, atol=0.1)
    assert namespace["phi"].shape == namespace["particles"].shape
