"""The docs' code examples run as written."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("engine.md", ("torch.Size([2, 32, 48, 40])", "blocks.3.norm1 (recommended)")),
        ("checkpoints.md", ("ViT3D blocks.1.norm1", "True", "'blocks.1.norm1 (recommended)'")),
        ("batch.md", ("4 cases: 4 explained, 0 already done, 0 failed",)),
    ],
)
def test_doc_examples_run(name, expected, capsys):
    blocks = python_blocks(DOCS / name)
    assert blocks, f"{name} has no python example"
    for block in blocks:
        exec(compile(block, str(DOCS / name), "exec"), {})
    out = capsys.readouterr().out
    for text in expected:
        assert text in out


def test_readme_example_runs_as_written(tmp_path, monkeypatch):
    from napari_vitcam.demo.shipped import SHIPPED_CHECKPOINT
    from napari_vitcam.demo.volumes import make_volume
    from napari_vitcam.pipeline.explain import VolumeExplanation

    (block,) = python_blocks(ROOT / "README.md")
    shutil.copy(SHIPPED_CHECKPOINT, tmp_path / "model.safetensors")  # the names the example uses
    np.save(tmp_path / "scan.npy", make_volume(0, 48).volume)
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(block, "README.md", "exec"), scope)
    result = scope["result"]
    assert isinstance(result, VolumeExplanation)
    assert result.heatmap.dtype == np.float32 and result.heatmap.shape == (48, 48, 48)
    assert result.heatmap.min() >= 0 and result.heatmap.max() == 1
    (name, probability), *_ = result.ranked_probabilities
    assert name in ("solid", "ring") and 0.5 < probability <= 1
