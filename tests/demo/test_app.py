"""Sample data, the plugin's contributions inside napari, and ``napari-vitcam demo``."""

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_vitcam import ViT3D, ViTConfig
from napari_vitcam._napari.recent import CONFIG_DIR_VARIABLE
from napari_vitcam._napari.widget import VitcamWidget
from napari_vitcam.cli.main import main as cli_main
from napari_vitcam.demo import app as demo_app
from napari_vitcam.demo.sample_data import MASK_NAME, VOLUME_NAME, demo_sample
from napari_vitcam.models.checkpoint import save_checkpoint
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "src" / "napari_vitcam" / "_napari" / "napari.yaml"


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(CONFIG_DIR_VARIABLE, str(tmp_path / "config"))


@pytest.fixture
def small_demo_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = ViT3D(ViTConfig(img_size=64, patch_size=16, width=16, depth=2, heads=2, num_classes=2))
    spec = ModelSpec(
        input=InputSpec(spatial_size=(64, 64, 64), normalization=Normalization("zscore")), class_names=("solid", "ring")
    )
    return save_checkpoint(tmp_path / "demo.safetensors", model, spec)


def test_the_sample_is_a_volume_and_its_mask():
    (volume, volume_kwargs, volume_kind), (mask, mask_kwargs, mask_kind) = demo_sample()
    assert (volume_kind, mask_kind) == ("image", "labels")
    assert volume.shape == mask.shape == (64, 64, 64) and volume.dtype == np.float32
    assert set(np.unique(mask)) == {0, 1}
    assert volume_kwargs["name"] == VOLUME_NAME and mask_kwargs["name"] == MASK_NAME
    low, high = volume_kwargs["contrast_limits"]
    assert volume.min() <= low < high
    assert volume_kwargs["metadata"]["label"] in ("solid", "ring")


def test_napari_opens_the_sample_and_docks_the_widget(npe2pm, make_napari_viewer):
    viewer = make_napari_viewer()
    with npe2pm.tmp_plugin(manifest=str(MANIFEST)):  # the manifest as installed plugins expose it
        viewer.open_sample("napari-vitcam", "demo")
        assert [layer.name for layer in viewer.layers] == [VOLUME_NAME, MASK_NAME]
        _dock, widget = viewer.window.add_plugin_dock_widget("napari-vitcam", "Grad-CAM (3D ViT)")
    assert isinstance(widget, VitcamWidget) and widget.layer_names() == [VOLUME_NAME]


def test_the_demo_refuses_to_start_without_its_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo_app, "shipped_checkpoint", lambda: tmp_path / "missing.safetensors")
    assert cli_main(["demo", "--run"]) == 1
    message = capsys.readouterr().err.strip()
    assert "missing.safetensors is missing" in message and "train-demo" in message and "\n" not in message


@pytest.mark.parametrize("ndisplay", [2, 3])
def test_the_demo_runs_headless_and_saves_a_screenshot(small_demo_checkpoint, tmp_path, capsys, ndisplay):
    out = tmp_path / f"demo_{ndisplay}d.png"
    argv = ["--run", "--screenshot", str(out), "--checkpoint", str(small_demo_checkpoint), "--ndisplay", str(ndisplay)]
    assert demo_app.main(argv) == 0, capsys.readouterr().err
    from PIL import Image

    image = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert image.shape[0] > 300 and image.shape[1] > 300
    warm = image[..., 0] - image[..., 2] > 40
    assert warm.sum() > 100, "no heatmap colours in the screenshot"


def test_the_demo_with_the_shipped_checkpoint(tmp_path, capsys):
    if not demo_app.shipped_checkpoint().is_file():
        pytest.skip("the demo checkpoint has not been trained into this checkout")
    out = tmp_path / "demo.png"
    assert demo_app.main(["--run", "--screenshot", str(out)]) == 0, capsys.readouterr().err
    assert out.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--seed", "-1"], "--seed -1: give a seed of 0 or more"),
        (["--screenshot", "{scan}"], "cannot save the screenshot as scan.npy: end the file name with .png"),
        (["--screenshot", "{tmp}"], "is a folder: give a .png file name"),
        (["--checkpoint", "{tmp}/absent.safetensors"], "no checkpoint at"),
    ],
)
def test_demo_refuses_bad_arguments_in_one_line_before_napari_opens(tmp_path, capsys, argv, expected):
    scan = tmp_path / "scan.npy"
    np.save(scan, np.arange(8, dtype=np.float32))
    argv = [a.format(scan=scan, tmp=tmp_path) for a in argv]
    assert demo_app.main(argv) == 1  # no viewer is opened: a napari window would not return here
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-vitcam demo: ") and expected in err and "\n" not in err
    np.testing.assert_array_equal(np.load(scan), np.arange(8, dtype=np.float32))  # the user's file is untouched
