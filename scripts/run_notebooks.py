"""Execute the notebooks top to bottom with a real Jupyter kernel and store their outputs in place.

::

    make notebooks                                   # = .venv/bin/python scripts/run_notebooks.py
    .venv/bin/python scripts/run_notebooks.py notebooks/03_variance_collapse.ipynb
    .venv/bin/python scripts/run_notebooks.py --small --check   # small sizes, nothing written (what CI runs)

Every notebook reads ``PARTICLESAMPLING_NOTEBOOK_SMALL`` in its first cell; ``--small`` sets it to 1
(short runs for the test suite), and without it the stored versions are computed at full (still
modest) size. The kernel is this interpreter (``sys.executable`` with ipykernel): a kernel spec
pointing at it is written to a temporary directory put first on ``JUPYTER_PATH``, so a ``python3``
kernel registered elsewhere on the machine is never picked up by mistake. ``OMP_NUM_THREADS``
defaults to 1 (the notebooks' models are small, and a shared CPU is slower with more threads), and
``MPLBACKEND`` is removed so that figures are drawn inline as PNG outputs; the PNGs are stored with a
256-colour palette (about three times smaller).

``tests/integration/test_notebooks.py`` uses :func:`execute_notebook` from this file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
KERNEL_NAME = "particlesampling-python"
SMALL_VARIABLE = "PARTICLESAMPLING_NOTEBOOK_SMALL"
#: largest stored notebook (bytes): outputs are small PNGs
MAX_NOTEBOOK_BYTES = 1_000_000


def notebook_paths() -> list:
    """The notebooks of ``notebooks/``, in name order."""
    return sorted(NOTEBOOKS.glob("*.ipynb"))


@contextmanager
def this_interpreter_kernel() -> Iterator[str]:
    """A kernel spec that runs ``sys.executable -m ipykernel_launcher``, first on ``JUPYTER_PATH``.

    Yields the kernel name; the previous ``JUPYTER_PATH`` is restored on exit.
    """
    with tempfile.TemporaryDirectory(prefix="ps-kernel-") as root:
        spec_dir = Path(root) / "kernels" / KERNEL_NAME
        spec_dir.mkdir(parents=True)
        spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (particlesampling)", "language": "python",
                "metadata": {"debugger": False}}
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = root + (os.pathsep + old if old else "")
        try:
            yield KERNEL_NAME
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old


@contextmanager
def _notebook_environment(small: bool) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in (SMALL_VARIABLE, "MPLBACKEND", "OMP_NUM_THREADS")}
    if small:
        os.environ[SMALL_VARIABLE] = "1"
    else:
        os.environ.pop(SMALL_VARIABLE, None)
    os.environ.pop("MPLBACKEND", None)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute_notebook(path: Path, *, small: bool, cwd: Optional[Path] = None, timeout: int = 600):
    """Run every cell of the notebook at ``path`` in a fresh kernel of this interpreter.

    Parameters
    ----------
    path : Path
        An ``.ipynb`` file (read, not written).
    small : bool
        Set ``PARTICLESAMPLING_NOTEBOOK_SMALL=1`` for the kernel.
    cwd : Path, optional
        Working directory of the kernel (default: the notebook's folder).
    timeout : int
        Seconds allowed per cell.

    Returns
    -------
    (nbformat.NotebookNode with outputs, seconds of wall time)

    Raises
    ------
    nbclient.exceptions.CellExecutionError
        At the first cell that raises, naming it.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    kernelspec = dict(nb.metadata.get("kernelspec", {}))
    with this_interpreter_kernel() as kernel_name, _notebook_environment(small):
        client = NotebookClient(nb, kernel_name=kernel_name, timeout=timeout, allow_errors=False,
                                resources={"metadata": {"path": str(cwd or path.parent)}})
        start = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - start
    # readers open it with their own default Python 3 kernel
    nb.metadata["kernelspec"] = kernelspec or {"display_name": "Python 3", "language": "python", "name": "python3"}
    return nb, seconds


def palette_png(raw: bytes, colors: int = 256) -> bytes:
    """PNG bytes re-encoded with a palette of ``colors`` colours (no dithering), if that is smaller.

    matplotlib writes full-colour PNGs; plots have few colours, and a palette image is about three
    times smaller with no visible difference.
    """
    import io

    from PIL import Image

    with Image.open(io.BytesIO(raw)) as image:
        rgb = image.convert("RGB")
    buf = io.BytesIO()
    rgb.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        buf, "PNG", optimize=True)
    return buf.getvalue() if len(buf.getvalue()) < len(raw) else raw


def shrink_outputs(nb) -> None:
    """Every PNG output of ``nb`` through :func:`palette_png`, in place."""
    import base64

    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                data["image/png"] = base64.b64encode(palette_png(base64.b64decode(data["image/png"]))).decode()


def _write(nb, path: Path) -> int:
    import nbformat

    nbformat.validate(nb)
    text = nbformat.writes(nb) + "\n"
    path.write_text(text)
    return len(text.encode())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: all in notebooks/)")
    ap.add_argument("--small", action="store_true", help=f"set {SMALL_VARIABLE}=1 (short runs)")
    ap.add_argument("--check", action="store_true", help="run only; do not write the outputs back")
    ap.add_argument("--timeout", type=int, default=900, help="seconds allowed per cell")
    ns = ap.parse_args(argv)
    paths = [p.resolve() for p in ns.notebooks] or notebook_paths()
    failed = 0
    for path in paths:
        nb, seconds = execute_notebook(path, small=ns.small, timeout=ns.timeout)
        if ns.check:
            print(f"{path.relative_to(REPO)}: ran in {seconds:.0f} s")
            continue
        shrink_outputs(nb)
        size = _write(nb, path)
        print(f"{path.relative_to(REPO)}: ran in {seconds:.0f} s, wrote {size / 1e3:.0f} kB")
        if size > MAX_NOTEBOOK_BYTES:
            print(f"  larger than {MAX_NOTEBOOK_BYTES / 1e6:.0f} MB: make its pictures smaller", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
