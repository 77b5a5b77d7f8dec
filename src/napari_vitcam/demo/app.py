"""``napari-vitcam demo``: napari with a demo volume, its lesion mask and the widget, ready to run.

The shipped checkpoint is loaded in the widget. ``--run`` computes the
heatmap and shows it; ``--screenshot PATH`` saves the canvas once everything
is shown and exits, so the command also works headless (under Xvfb).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_vitcam.demo.sample_data import DEFAULT_SEED, MASK_NAME, VOLUME_NAME, demo_layers
from napari_vitcam.demo.shipped import shipped_checkpoint

if TYPE_CHECKING:
    from napari_vitcam._napari.widget import VitcamWidget

WIDGET_NAME = "Grad-CAM (3D ViT)"
#: Seconds a headless ``--screenshot`` run may take before it gives up.
HEADLESS_TIMEOUT_S = 600
#: The window size of a headless ``--screenshot`` run.
SCREENSHOT_WINDOW = (1400, 900)
#: An oblique 3D view of the volume.
CAMERA_ANGLES_3D = (-20.0, 35.0, 140.0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="napari-vitcam demo", description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="store_true", help="compute the heatmap and show it")
    parser.add_argument("--screenshot", type=Path, metavar="PATH", help="save the canvas as PNG to PATH, then exit")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"demo volume seed (default {DEFAULT_SEED})")
    parser.add_argument("--ndisplay", type=int, choices=(2, 3), default=3, help="2D slices or 3D rendering (default 3)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="another checkpoint (default: the shipped one)")
    return parser.parse_args(argv)


@dataclass
class DemoSession:
    """The viewer, its widget and what the command was asked to do."""

    viewer: Any
    widget: VitcamWidget
    run: bool
    done: bool = False
    failed: bool = False

    def start(self, checkpoint: Path) -> None:
        self.widget.load_finished.connect(self._loaded)
        self.widget.run_finished.connect(self._ran)
        self.widget.load(checkpoint)

    def _loaded(self, ready) -> None:
        if ready is None:
            self.finish(failed=True)
        elif self.run:
            if not self.widget.run():
                self.finish(failed=True)
        else:
            self.finish()

    def _ran(self, layer) -> None:
        if layer is not None:
            frame_heatmap(self.viewer, layer)
        self.finish(failed=layer is None)

    def finish(self, *, failed: bool = False) -> None:
        """Done: later loads and runs in the widget are the user's own."""
        self.widget.load_finished.disconnect(self._loaded)
        self.widget.run_finished.disconnect(self._ran)
        self.failed = failed
        self.done = True


def outline_mask_in_2d(viewer, mask, event=None) -> None:
    """Draw the mask as an outline in 2D, so the heatmap inside stays visible (3D has no outlines)."""
    mask.contour = 1 if viewer.dims.ndisplay == 2 else 0


def camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9 on)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def frame_heatmap(viewer, layer) -> None:
    """Show the slice through the heatmap's peak in 2D; an oblique view in 3D."""
    import numpy as np

    peak = np.unravel_index(int(np.argmax(layer.data)), layer.data.shape)
    world = layer.data_to_world(peak)
    if len(world) == viewer.dims.ndim:
        viewer.dims.point = tuple(world)
    viewer.reset_view(reset_camera_angle=False)


def open_viewer(seed: int, ndisplay: int, *, size: tuple[int, int] | None = None):
    """A viewer with the demo volume and its mask, and the widget docked; ``size`` is the window's."""
    import napari

    from napari_vitcam._napari.widget import VitcamWidget

    viewer = napari.Viewer(title="napari-vitcam demo")
    if size is not None:
        viewer.window.resize(*size)
    for data, kwargs, kind in demo_layers(seed):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    mask = viewer.layers[MASK_NAME]
    viewer.dims.ndisplay = ndisplay
    outline_mask_in_2d(viewer, mask)
    viewer.dims.events.ndisplay.connect(partial(outline_mask_in_2d, viewer, mask))
    if ndisplay == 3:
        mask.visible = False  # 3D shows labels as solid surfaces, which would hide the heatmap
        camera(viewer).angles = CAMERA_ANGLES_3D
    widget = VitcamWidget(viewer)
    viewer.window.add_dock_widget(widget, name=WIDGET_NAME, area="right")
    widget.select_layer(VOLUME_NAME)
    return viewer, widget


def wait_until_done(session: DemoSession, timeout_s: float) -> bool:
    """Run the event loop until the session is done; False on timeout."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    poll = QTimer()

    def quit_when_done() -> None:
        if session.done:
            loop.quit()

    poll.timeout.connect(quit_when_done)
    poll.start(50)
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    if not session.done:
        loop.exec()
    poll.stop()
    return session.done


def _echo(notification) -> None:
    print(notification, file=sys.stderr)


def argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments (one line: cause and remedy), checked before napari opens; None: nothing."""
    if args.seed < 0:
        return f"--seed {args.seed}: give a seed of 0 or more"
    if args.checkpoint is not None and not args.checkpoint.exists():
        return f"no checkpoint at {args.checkpoint}: check the path, or leave --checkpoint out for the shipped model"
    screenshot = args.screenshot
    if screenshot is not None:
        if screenshot.is_dir():
            return f"{screenshot} is a folder: give a .png file name for the screenshot"
        if screenshot.suffix.lower() != ".png":  # the canvas is saved as PNG: never over a scan or a checkpoint
            return f"cannot save the screenshot as {screenshot.name}: end the file name with .png"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problem = argument_problem(args)
    if problem is not None:
        print(f"napari-vitcam demo: {problem}", file=sys.stderr)
        return 1
    checkpoint = args.checkpoint or shipped_checkpoint()  # the user's path exists (a file or a MONAI bundle folder)
    if args.checkpoint is None and not checkpoint.is_file():
        print(
            f"napari-vitcam demo: the demo checkpoint {checkpoint} is missing: reinstall napari-vitcam, "
            "or train it with 'napari-vitcam train-demo --out <that path>'",
            file=sys.stderr,
        )
        return 1
    viewer, widget = open_viewer(args.seed, args.ndisplay, size=None if args.screenshot is None else SCREENSHOT_WINDOW)
    session = DemoSession(viewer, widget, run=args.run)
    session.start(checkpoint)
    if args.screenshot is None:
        import napari

        napari.run()
        return 0
    from napari.utils.notifications import notification_manager

    notification_manager.notification_ready.connect(_echo)  # a headless run shows them on stderr
    try:
        if not wait_until_done(session, HEADLESS_TIMEOUT_S):
            print(f"napari-vitcam demo: gave up after {HEADLESS_TIMEOUT_S} s", file=sys.stderr)
            return 1
        if session.failed:
            print("napari-vitcam demo: loading or running failed (see the notification above)", file=sys.stderr)
            return 1
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(args.screenshot), canvas_only=True)
        print(f"saved {args.screenshot}")
        return 0
    finally:
        notification_manager.notification_ready.disconnect(_echo)
        viewer.close()
