"""The docs' code examples run as written."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.parametrize("name", ["engine.md"])
def test_doc_examples_run(name, capsys):
    blocks = python_blocks(DOCS / name)
    assert blocks, f"{name} has no python example"
    for block in blocks:
        exec(compile(block, str(DOCS / name), "exec"), {})
    out = capsys.readouterr().out
    assert "torch.Size([2, 32, 48, 40])" in out and "blocks.3.norm1 (recommended)" in out
