"""The README section "Repulsive attention heads in five lines" runs as written and does what it says."""

import re
from pathlib import Path

import pytest
import torch

import attention_adapter

README = Path(__file__).resolve().parents[2] / "README.md"

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _section_code():
    text = README.read_text(encoding="utf-8")
    start = text.index("## Repulsive attention heads in five lines")
    # the section ends at the next heading of level 2 or 3 (a sub-section may follow it)
    end = re.compile(r"\n#{2,3} ").search(text, start + 1).start()
    blocks = re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)
    assert len(blocks) == 1, f"expected one python block in the README section, found {len(blocks)}"
    return blocks[0]


def test_readme_adapter_section_runs_as_written():
    torch.manual_seed(0)
    scope = {}
    exec(compile(_section_code(), "README.md", "exec"), scope)
    heads = scope["heads"]
    assert isinstance(heads, attention_adapter.RepulsiveHeads)
    assert heads.step == 10 and heads.preset == attention_adapter.An2020(alpha=0.01, epsilon=0.01)
    assert len(heads.last_info.groups) == 6 and not heads.last_info.skipped
    assert all(torch.isfinite(p).all() for p in scope["model"].parameters())
