"""Run the fenced ``python`` blocks of one Markdown page, top to bottom, as a reader would.

The blocks are found and executed by Sybil (https://sybil.readthedocs.io, pinned in
requirements/test.txt): its Markdown lexer finds the fences and its ``PythonEvaluator`` compiles and
executes each block with the page's line numbers, so a failing block's traceback points at the
line of the page. Sybil was chosen over pytest-examples (pre-1.0, built around formatting and print
checks, every block run on its own) and phmdoctest (unmaintained since 2022, generates test files):
it is maintained, has a documented API for parsers and evaluators, and keeps one namespace per page,
which is what "continues the block above" needs.

What a block means is visible to the reader in its first line, and honoured here:

* no marker: a complete example, executed in a fresh namespace (it may not lean on earlier blocks);
* ``# continues the block above``: executed in the namespace the blocks above it left;
* ``# fragment: <what the reader supplies>``: shown for its shape; compiled (so it must be valid
  Python) but not executed. Signatures and API summaries that are not Python at all belong in a
  ``text`` fence instead.

Usage: ``python tests/docs/markdown_examples.py PAGE.md`` runs every block of the page in this fresh
process and exits 0, or 1 with the failing block's line and traceback; ``--list`` prints each block's
line and kind without running anything. The test suite (tests/docs/test_docs_examples.py) runs it
once per page in a subprocess.
"""

from __future__ import annotations

import re
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from sybil import Document
from sybil.evaluators.python import PythonEvaluator, pad
from sybil.parsers.markdown import CodeBlockParser

CONTINUES = "# continues the block above"
FRAGMENT = re.compile(r"#\s*fragment\b")

__all__ = ["Block", "blocks_of", "kind_of", "run_page", "CONTINUES"]


def kind_of(source: str) -> str:
    """``"complete"``, ``"continues"`` or ``"fragment"``, read from a block's first line."""
    first = next((line.strip() for line in source.splitlines() if line.strip()), "")
    if first.lower().startswith(CONTINUES):
        return "continues"
    if FRAGMENT.match(first.lower()):
        return "fragment"
    return "complete"


class PageEvaluator:
    """Sybil evaluator that honours the markers: a fresh namespace, the one above, or compile only."""

    def __init__(self) -> None:
        self.python = PythonEvaluator()
        self.ran: list[tuple[int, str, float]] = []

    def __call__(self, example) -> None:
        __tracebackhide__ = True
        kind = kind_of(str(example.parsed))
        t0 = time.perf_counter()
        if kind == "fragment":
            compile(pad(example.parsed, example.line + example.parsed.line_offset), example.path, "exec",
                    dont_inherit=True)
        else:
            if kind == "complete":
                example.namespace.clear()
            elif not any(line < example.line and k != "fragment" for line, k, _ in self.ran):
                raise AssertionError(f"{example.path}, line {example.line}: '{CONTINUES}' but no block above ran")
            self.python(example)
        self.ran.append((example.line, kind, time.perf_counter() - t0))


@dataclass(frozen=True)
class Block:
    line: int
    kind: str
    source: str


def _document(path: Path, evaluator: PageEvaluator | None = None) -> Document:
    return Document.parse(str(path), CodeBlockParser(language="python", evaluator=evaluator or PageEvaluator()))


def blocks_of(path) -> list[Block]:
    """The page's ``python`` blocks (line of the fence, kind, source) as Sybil finds them."""
    return [Block(ex.line, kind_of(str(ex.parsed)), str(ex.parsed)) for ex in _document(Path(path))]


def run_page(path) -> list[tuple[int, str, float]]:
    """Evaluate every ``python`` block of ``path`` in order; returns (line, kind, seconds) per block."""
    evaluator = PageEvaluator()
    for example in _document(Path(path), evaluator):
        example.evaluate()
    return evaluator.ran


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    listing = "--list" in args
    pages = [a for a in args if a != "--list"]
    if len(pages) != 1:
        sys.stderr.write("usage: markdown_examples.py [--list] PAGE.md\n")
        return 2
    page = Path(pages[0]).resolve()
    if listing:
        for block in blocks_of(page):
            print(f"{page.name}:{block.line}: {block.kind}")
        return 0
    try:
        ran = run_page(page)
    except BaseException:  # noqa: BLE001 - report any failure of a block, with the page's line numbers
        traceback.print_exc()
        return 1
    for line, kind, seconds in ran:
        print(f"{page.name}:{line}: {kind} ({seconds:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
