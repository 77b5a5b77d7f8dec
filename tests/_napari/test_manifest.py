"""The napari manifest is valid and its commands import."""

import subprocess
import sys
from pathlib import Path

from npe2 import PluginManifest

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "src" / "napari_vitcam" / "_napari" / "napari.yaml"


def validate(target: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "npe2", "validate", target, "--imports"], capture_output=True, text=True, timeout=120
    )


def test_npe2_validates_the_manifest_file_and_its_imports():
    result = validate(str(MANIFEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_manifest_contributes_the_widget_and_the_sample():
    manifest = PluginManifest.from_file(MANIFEST)
    assert manifest.name == "napari-vitcam"
    assert [w.display_name for w in manifest.contributions.widgets] == ["Grad-CAM (3D ViT)"]
    assert [s.key for s in manifest.contributions.sample_data] == ["demo"]


def test_npe2_validates_the_installed_plugin():
    assert PluginManifest.from_distribution("napari-vitcam").name == "napari-vitcam"
    result = validate("napari-vitcam")
    assert result.returncode == 0, result.stdout + result.stderr
