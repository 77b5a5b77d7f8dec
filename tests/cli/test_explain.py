"""The command line: help, and headless explanations of real files."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import napari_vitcam as nv
from napari_vitcam.cli.main import main
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization


def test_help_lists_the_commands(capsys):
    assert main([]) == 2
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("demo", "explain", "train-demo", "evaluate-demo"):
        assert command in out


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=2)
    spec = ModelSpec(InputSpec(1, (16, 16, 16), Normalization("zscore")), ("calm", "busy"), "blocks.1.norm1")
    return nv.save_checkpoint(tmp_path / "model.safetensors", model, spec)


def test_explain_writes_a_heatmap_the_size_of_the_volume(tmp_path, checkpoint, capsys):
    volume = np.random.default_rng(0).normal(size=(20, 24, 18)).astype(np.float32)
    np.save(tmp_path / "scan.npy", volume)
    out = tmp_path / "heat.npy"
    assert main(["explain", str(checkpoint), str(tmp_path / "scan.npy"), "-o", str(out), "--class", "busy"]) == 0
    summary = json.loads(capsys.readouterr().out)
    heatmap = np.load(out)
    expected = nv.explain_volume(nv.load_checkpoint(checkpoint), volume, class_idx="busy")
    np.testing.assert_allclose(heatmap, expected.heatmap, atol=1e-6)
    assert summary["explained_class"] == "busy" and summary["target_layer"] == "blocks.1.norm1"
    assert set(summary["probabilities"]) == {"calm", "busy"}


def test_explain_reports_bad_input_in_one_line(tmp_path, checkpoint, capsys):
    np.save(tmp_path / "flat.npy", np.zeros((8, 8), np.float32))
    assert main(["explain", str(checkpoint), str(tmp_path / "flat.npy")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-vitcam explain: the volume has 2 dimensions") and "\n" not in err
    (tmp_path / "scan.tif").write_bytes(b"II*\x00")
    assert main(["explain", str(checkpoint), str(tmp_path / "scan.tif")]) == 1
    err = capsys.readouterr().err.strip()
    assert "cannot read scan.tif: give one of NumPy (.npy)" in err and "NIfTI" in err and "\n" not in err


def test_explain_imports_neither_qt_nor_napari(tmp_path, checkpoint):
    np.save(tmp_path / "scan.npy", np.zeros((16, 16, 16), np.float32))
    code = (
        "import sys; from napari_vitcam.cli.main import main; "
        f"rc = main(['explain', {str(checkpoint)!r}, {str(tmp_path / 'scan.npy')!r}]); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt6', 'PyQt5', 'PySide6', 'magicgui')); "
        "print('IMPORTED', bad); sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "IMPORTED []" in result.stdout


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ((), "the volume has non-finite values: 1 of 4096 voxels are not finite (1 NaN; the first at index (1, 2, 3))"),
        (("--nonfinite", "replace", "--device", "banana"), "unknown device 'banana'"),
    ],
)
def test_nan_voxels_and_an_unknown_device_are_refused_before_the_checkpoint_is_read(tmp_path, capsys, extra, expected):
    volume = np.zeros((16, 16, 16), np.float32)
    volume[1, 2, 3] = np.nan
    np.save(tmp_path / "scan.npy", volume)
    never_read = tmp_path / "model.safetensors"  # absent: reading it would be the error
    assert main(["explain", str(never_read), str(tmp_path / "scan.npy"), "-o", str(tmp_path / "h.npy"), *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-vitcam explain: ") and expected in err and "\n" not in err
    assert not (tmp_path / "h.npy").exists()


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path, checkpoint):
    np.save(tmp_path / "scan.npy", np.zeros((16, 16, 16), np.float32))
    argv = [sys.executable, "-m", "napari_vitcam.cli.main", "explain", str(checkpoint), str(tmp_path / "scan.npy")]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # as `| head -0` does: the JSON summary has nowhere to go
    err = process.stderr.read().decode()
    assert process.wait() == 141 and "Traceback" not in err and err == ""
    assert np.load(tmp_path / "scan.heatmap.npy").shape == (16, 16, 16)  # the heatmap was written all the same


def test_the_summary_names_the_method_auto_chose(tmp_path, capsys):
    from napari_vitcam.demo.shipped import SHIPPED_CLS_CHECKPOINT
    from napari_vitcam.demo.volumes import make_volume

    np.save(tmp_path / "scan.npy", make_volume(0, 32).volume)
    argv = ["explain", str(SHIPPED_CLS_CHECKPOINT), str(tmp_path / "scan.npy"), "--method", "auto"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "rollout" and summary["target_layer"] == "attention, every block"
