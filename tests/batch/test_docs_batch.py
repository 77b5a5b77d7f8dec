"""docs/batch.md: its Python example runs as written and gives what it says."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "batch.md"


def test_the_python_example_runs(capsys):
    (block,) = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    namespace: dict = {}
    exec(compile(block, str(DOC), "exec"), namespace)
    table = namespace["table"]
    assert list(table["status"]) == ["ok"] * 4
    assert all((namespace["folder"] / "results" / h).is_file() for h in table["heatmap"])
    out = capsys.readouterr().out
    assert "4 cases: 4 explained, 0 already done, 0 failed" in out


def test_every_documented_column_is_in_the_table(tmp_path: Path):
    from napari_vitcam.batch.run import _table_rows

    documented = set()
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("| `"):
            documented |= set(re.findall(r"`([A-Za-z_0-9]+)`", line.split("|")[1]))
    record = {"probabilities": {"CLASS": 0.5}, "timings": {"total": 1.0}, "metrics": {}}
    columns = set(_table_rows([record], ["CLASS"])[0])
    assert columns == documented
