"""The notebooks: each runs top to bottom in a real Jupyter kernel at small size in under two minutes,
and the stored versions carry their outputs (small, valid pictures) and use the public API only.

Execution goes through ``scripts/run_notebooks.py`` (the command that regenerates the stored
notebooks), with ``PARTICLESAMPLING_NOTEBOOK_SMALL=1``, in a temporary working directory.
"""

from __future__ import annotations

import ast
import base64
import importlib.util
import io
import re
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

import attention_adapter
import particlesampling

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("run_notebooks", REPO / "scripts" / "run_notebooks.py")
run_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_notebooks)

NOTEBOOKS = run_notebooks.notebook_paths()
#: the story each notebook must tell (a word of its file name)
STORIES = ("toy_posteriors", "kernels_and_bandwidths", "variance_collapse", "repulsive_attention_heads")
TIME_LIMIT_S = 120
IMAGE_TYPES = ("image/png", "image/gif")


def _colours(pixels: np.ndarray) -> int:
    """Number of distinct RGB colours of an (H, W, 3) array."""
    rgb = pixels.reshape(-1, 3).astype(np.int64)
    return len(np.unique((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]))


def _pictures(nb) -> list:
    """``(cell index, mime type, PIL image)`` of every picture output."""
    found = []
    for i, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            for mime in IMAGE_TYPES:
                if mime in output.get("data", {}):
                    raw = base64.b64decode(output["data"][mime])
                    found.append((i, mime, Image.open(io.BytesIO(raw)), len(raw)))
    return found


def _check_picture(image: Image.Image, where: str) -> None:
    """A decodable image of a plausible size whose frames are not blank (more than one colour)."""
    assert image.size[0] >= 100 and image.size[1] >= 100, f"{where}: size {image.size}"
    for k in range(getattr(image, "n_frames", 1)):
        image.seek(k)
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
        assert pixels.std() > 1.0 and _colours(pixels) > 2, f"{where}: frame {k} blank"


def _errors(nb) -> list:
    return [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(nb.cells)
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def test_there_is_one_notebook_per_story():
    names = [p.stem for p in NOTEBOOKS]
    assert len(names) >= 4
    for story in STORIES:
        assert any(story in name for name in names), f"no notebook for {story}: {names}"


def test_the_kernel_is_this_interpreter_and_sees_the_size_switch(tmp_path):
    probe = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os, sys\nprint(sys.executable)\nprint(os.environ.get('PARTICLESAMPLING_NOTEBOOK_SMALL'))\n"
        "print(os.getcwd())")])
    path = tmp_path / "probe.ipynb"
    nbformat.write(probe, str(path))
    work = tmp_path / "work"
    work.mkdir()
    executed, _ = run_notebooks.execute_notebook(path, small=True, cwd=work, timeout=120)
    executable, small, cwd = executed.cells[0].outputs[0]["text"].split()
    assert Path(executable).resolve() == Path(sys.executable).resolve()
    assert small == "1" and Path(cwd).resolve() == work.resolve()
    full, _ = run_notebooks.execute_notebook(path, small=False, cwd=work, timeout=120)
    assert full.cells[0].outputs[0]["text"].split()[1] == "None"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_small_in_a_kernel(path, tmp_path):
    executed, seconds = run_notebooks.execute_notebook(path, small=True, cwd=tmp_path, timeout=TIME_LIMIT_S)
    assert seconds < TIME_LIMIT_S, f"{path.name} took {seconds:.0f} s"
    assert not _errors(executed)
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "a cell was not executed"
    pictures = _pictures(executed)
    assert len(pictures) >= 3, f"{path.name}: only {len(pictures)} pictures"
    for i, mime, image, _ in pictures:
        _check_picture(image, f"{path.name} cell {i} ({mime})")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_notebook_shows_its_outputs(path):
    assert path.stat().st_size < run_notebooks.MAX_NOTEBOOK_BYTES, f"{path.name}: {path.stat().st_size} bytes"
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    assert not _errors(nb)
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    # executed top to bottom in one fresh kernel
    assert counts == list(range(1, len(counts) + 1)), counts
    pictures = _pictures(nb)
    assert len(pictures) >= 3
    for i, mime, image, size in pictures:
        assert size < 300_000, f"{path.name} cell {i}: {size} bytes"
        _check_picture(image, f"{path.name} cell {i} ({mime})")
    assert nb.metadata["kernelspec"]["name"] == "python3"
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert run_notebooks.SMALL_VARIABLE in first.source


def _code(nb) -> str:
    """The notebook's code, IPython magics dropped."""
    lines = [line for c in nb.cells if c.cell_type == "code" for line in c.source.splitlines()]
    return "\n".join(line for line in lines if not line.lstrip().startswith("%"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_uses_the_public_api_and_defines_no_helpers(path):
    """Every helper lives in the package: no functions or classes of its own, no private names."""
    tree = ast.parse(_code(nbformat.read(str(path), as_version=4)))
    wrong = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            wrong.append(f"defines {node.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("particlesampling",
                                                                                        "attention_adapter"):
            package = {"particlesampling": particlesampling, "attention_adapter": attention_adapter}[
                node.module.split(".")[0]]
            if node.module != package.__name__:
                wrong.append(f"imports from the sub-module {node.module}")
            wrong += [f"imports {a.name}" for a in node.names if a.name not in package.__all__]
        elif isinstance(node, ast.Import):
            wrong += [f"imports {a.name}" for a in node.names
                      if a.name.split(".")[0] in ("particlesampling", "attention_adapter") and "." in a.name]
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ps"
              and node.attr not in particlesampling.__all__):
            wrong.append(f"uses ps.{node.attr}")
    assert not wrong, f"{path.name}: " + "; ".join(wrong)
    # public sub-module names used through ps.<module>.<name> exist in that module's __all__
    text = _code(nbformat.read(str(path), as_version=4))
    for module, name in re.findall(r"\bps\.(plotting|random|diagnostics|step_sizes|targets)\.(\w+)", text):
        assert name in getattr(particlesampling, module).__all__, f"{path.name}: ps.{module}.{name}"
