"""Loading a MONAI model from the widget after napari drew with Mesa's LLVM does not kill napari.

With a CUDA build of torch, loading a MONAI network imports triton (MONAI ->
torchvision -> torch._dynamo -> triton), whose private LLVM crashes the process
when Mesa's software OpenGL has loaded the system's LLVM first. Each case runs
in its own Python process, since the failure is a segmentation fault.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from napari_vitcam._napari.native_libraries import llvm_loaded, preload_triton, triton_library

SOURCE = str(Path(__file__).resolve().parents[2] / "src")
NO_MESA_LLVM = 77  # exit status of a child whose OpenGL did not load an LLVM

WRITE_CHECKPOINT = """
import sys
from monai.networks.nets import ViT
from napari_vitcam.models.checkpoint import save_checkpoint
from napari_vitcam.models.spec import InputSpec, ModelSpec
arguments = dict(in_channels=1, img_size=[16, 16, 16], patch_size=[8, 8, 8], hidden_size=16, mlp_dim=32,
                 num_layers=2, num_heads=2, classification=True, num_classes=2, post_activation="Tanh")
spec = ModelSpec(input=InputSpec(spatial_size=(16, 16, 16)), architecture="monai:ViT", arguments=arguments)
save_checkpoint(sys.argv[1], ViT(**arguments), spec)
"""

VIEWER_FIRST = """
import sys
import napari
from qtpy.QtCore import QEventLoop, QTimer
from qtpy.QtWidgets import QApplication

viewer = napari.Viewer(show=True)
for _ in range(20):
    QApplication.processEvents()
from napari_vitcam._napari.native_libraries import llvm_loaded
if not llvm_loaded():
    sys.exit({no_llvm})
assert "triton" not in sys.modules and "monai" not in sys.modules
{body}
viewer.close()
print("alive")
"""

PLAIN_IMPORT = "import monai.networks.nets"

WIDGET_LOAD = """
from napari_vitcam._napari.widget import VitcamWidget
widget = VitcamWidget(viewer)
viewer.window.add_dock_widget(widget)
loop = QEventLoop()
results = []
widget.load_finished.connect(lambda ready: (results.append(ready), loop.quit()))
QTimer.singleShot(120_000, loop.quit)
assert widget.load(sys.argv[1])
loop.exec()
assert results and results[0] is not None, results
assert "triton" in sys.modules, "the case is void: MONAI did not import triton"
"""


def _python(code: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SOURCE, os.environ.get("PYTHONPATH", "")])}
    env["NAPARI_VITCAM_CONFIG_DIR"] = str(tmp_path / "config")
    return subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(code), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_monai_model_loads_from_the_widget_after_the_viewer_drew(tmp_path):
    if importlib.util.find_spec("monai") is None:
        pytest.skip("MONAI is not installed: nothing imports triton on the load path")
    if triton_library() is None:
        pytest.skip("triton is not installed (a CPU build of torch): the crash needs triton's own LLVM")
    checkpoint = str(tmp_path / "vit.safetensors")
    written = _python(WRITE_CHECKPOINT, checkpoint, tmp_path=tmp_path)
    assert written.returncode == 0, written.stderr[-2000:]

    # The environment must show the bug: importing MONAI the plain way after napari drew crashes.
    plain = _python(VIEWER_FIRST.format(no_llvm=NO_MESA_LLVM, body=PLAIN_IMPORT), tmp_path=tmp_path)
    if plain.returncode == NO_MESA_LLVM:
        pytest.skip("OpenGL here does not load an LLVM (not Mesa's llvmpipe): the crash cannot happen")
    if plain.returncode == 0:
        pytest.skip("importing triton after Mesa's LLVM does not crash here: the environment cannot show the bug")

    loaded = _python(VIEWER_FIRST.format(no_llvm=NO_MESA_LLVM, body=WIDGET_LOAD), checkpoint, tmp_path=tmp_path)
    assert loaded.returncode == 0, (plain.returncode, loaded.returncode, loaded.stderr[-3000:])
    assert loaded.stdout.strip().endswith("alive")


def test_nothing_is_preloaded_without_an_llvm_or_without_triton(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 00:00 0 /usr/lib/x86_64-linux-gnu/libGL.so.1\n")
    assert not llvm_loaded(maps)
    maps.write_text("7f00-7f01 r-xp 0 00:00 0 /usr/lib/x86_64-linux-gnu/libLLVM-15.so.1\n")
    assert llvm_loaded(maps)
    assert not llvm_loaded(tmp_path / "missing")
    if triton_library() is None:
        assert preload_triton() is None
