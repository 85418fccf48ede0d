"""Docs as tests: every fenced ``python`` block of README.md and docs/*.md runs, or says it is a fragment.

The blocks are found and run by Sybil (pinned in requirements/test.txt; chosen over pytest-examples
and phmdoctest for the reasons in tests/docs/markdown_examples.py): each page runs top to bottom in a
fresh Python process (``python tests/docs/markdown_examples.py PAGE``) in a temporary directory,
offline, with a time limit. A block's first line says what it is, for the reader and the checker
alike: nothing (a complete example, run in a fresh namespace), ``# continues the block above`` (run
in the namespace of the blocks above) or ``# fragment: ...`` (compiled, not run). Pages added later
are picked up by the glob, so their blocks are checked without touching this file.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sybil import Document
from sybil.parsers.markdown.lexers import FencedCodeBlockLexer

from tests.docs.markdown_examples import CONTINUES, blocks_of, run_page

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "tests" / "docs" / "markdown_examples.py"
PAGES = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
#: seconds one page may take in its own process on the shared 2-core machine (imports included)
PAGE_TIMEOUT = 300


def _page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


def _runnable_pages() -> list:
    return [pytest.param(p, id=_page_id(p), marks=pytest.mark.slow) for p in PAGES
            if any(b.kind != "fragment" for b in blocks_of(p))]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(MPLBACKEND="Agg", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    # one thread per library for the models' forward/backward passes on a shared machine (run_sampler already
    # picks one thread for small particle systems; see docs/benchmarks.md, "Threads")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return env


def _run(page: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER), str(page)], capture_output=True, text=True, env=_env(),
                          cwd=cwd, timeout=PAGE_TIMEOUT)


@pytest.mark.parametrize("page", _runnable_pages())
def test_page_examples_run(page, tmp_path):
    proc = _run(page, tmp_path)
    assert proc.returncode == 0, f"{_page_id(page)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    # every block that is not a fragment was executed, in order
    expected = [(b.line, b.kind) for b in blocks_of(page)]
    reported = re.findall(rf"^{re.escape(page.name)}:(\d+): (\w+) \(", proc.stdout, flags=re.M)
    assert [(int(line), kind) for line, kind in reported] == expected
    if page.name == "README.md":
        # what the first example prints: SVGD's particle mean, then the target's; they agree to 0.1
        numbers = [float(v) for v in re.findall(r"-?\d+\.\d*(?:e[-+]?\d+)?", proc.stdout.splitlines()[0])]
        assert len(numbers) == 4, proc.stdout.splitlines()[0]
        np.testing.assert_allclose(numbers[:2], numbers[2:], atol=0.1)


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_blocks_compile_and_are_marked_consistently(page):
    """Fast, in-process: every python block is valid Python (fragments included), and a page's first
    non-fragment block does not claim to continue anything."""
    blocks = blocks_of(page)
    for block in blocks:
        compile(block.source, f"{page.name}:{block.line}", "exec", dont_inherit=True)
    runnable = [b for b in blocks if b.kind != "fragment"]
    if runnable:
        assert runnable[0].kind == "complete", f"{page.name}:{runnable[0].line} continues nothing"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_no_python_block_escapes_the_checker(page):
    """A Python example fenced as ``py``, ``python3``, ``pycon`` or ``ipython`` would not be run: refuse
    those spellings (signatures and API summaries go in ``text`` fences)."""
    document = Document(page.read_text(encoding="utf-8"), str(page))
    languages = [region.lexemes["language"] for region in FencedCodeBlockLexer(r"[^\n]*")(document)]
    assert not {lang.strip().lower() for lang in languages} & {"py", "python3", "pycon", "ipython", "py3"}


def test_adapter_pages_have_a_complete_example():
    """Each page that documents attention_adapter has at least one complete block that builds the
    adapter on a model and runs it (not only fragments)."""
    adapter_pages = [p for p in PAGES if any("attention_adapter" in b.source for b in blocks_of(p))]
    assert REPO / "docs" / "attention_adapter.md" in adapter_pages
    for page in adapter_pages:
        complete = [b for b in blocks_of(page) if b.kind == "complete" and "attention_adapter" in b.source
                    and re.search(r"RepulsiveHeads\(|HeadRepulsionPenalty\(", b.source)]
        assert complete, f"{page.name}: no complete example of the adapter"


def _page(tmp_path, *blocks: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text("\n\ntext\n\n".join(f"```python\n{b}\n```" for b in blocks) + "\n", encoding="utf-8")
    return path


def test_checker_runs_complete_blocks_in_a_fresh_namespace(tmp_path):
    page = _page(tmp_path, "x = 1", "y = x + 1")
    with pytest.raises(NameError, match="'x'"):
        run_page(page)


def test_checker_honours_continues_and_fragment(tmp_path):
    page = _page(tmp_path, "x = 1", f"{CONTINUES}\nassert x == 1\nx = 2",
                 "# fragment: model is yours\nmodel.fit(undefined)", f"{CONTINUES}\nassert x == 2")
    assert [kind for _, kind, _ in run_page(page)] == ["complete", "continues", "fragment", "continues"]
    with pytest.raises(AssertionError):
        run_page(_page(tmp_path, "x = 1", f"{CONTINUES}\nassert x == 3"))
    with pytest.raises(AssertionError, match="no block above ran"):
        run_page(_page(tmp_path, f"{CONTINUES}\nx = 1"))


def test_checker_fails_a_fragment_that_is_not_python(tmp_path):
    with pytest.raises(SyntaxError):
        run_page(_page(tmp_path, "# fragment: a signature\nf(a, b) -> c"))


def test_checker_fails_a_page_in_its_own_process_with_the_page_line(tmp_path):
    page = _page(tmp_path, "x = 1", "raise ValueError('broken example')")
    proc = _run(page, tmp_path)
    assert proc.returncode == 1
    assert "broken example" in proc.stderr and 'page.md", line 8' in proc.stderr  # the line of the raise
