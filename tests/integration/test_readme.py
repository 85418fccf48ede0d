"""The README's Python blocks and pictures. Running the blocks is tests/docs/test_docs_examples.py's job
(every page, each in its own process); here, that they exist and that the pictures are there."""

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


def test_readme_pictures_exist_and_are_small_valid_images():
    """The pictures the README shows (made by `make pictures`): present, under 300 kB, not blank."""
    from PIL import Image

    names = re.findall(r"!\[[^\]]*\]\((docs/img/[^)]+)\)", README.read_text())
    assert len(names) >= 2 and any(n.endswith(".gif") for n in names)
    for name in names:
        path = README.parent / name
        assert path.exists(), name
        assert path.stat().st_size < 300_000, name
        with Image.open(path) as image:
            frames = getattr(image, "n_frames", 1)
            assert image.size[0] >= 300 and image.size[1] >= 150, name
            assert frames > 1 or not name.endswith(".gif"), name
            pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
        assert pixels.std() > 1.0, name


@pytest.mark.slow
def test_make_pictures_draws_the_banana(tmp_path):
    """`make pictures` (scripts/make_pictures.py) writes a palette PNG under its size limit."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.spec_from_file_location("make_pictures", README.parent / "scripts" / "make_pictures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = tmp_path / "banana.png"
    module.banana_png(path)
    assert path.stat().st_size < module.MAX_BYTES
    with Image.open(path) as image:
        assert image.mode == "P" and image.size[0] > 500  # the 256-colour palette
