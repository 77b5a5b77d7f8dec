"""Make the screenshots of the docs from the demo: a 2D slice, the 3D rendering, the window, the Evaluate section.

Runs the same code as ``napari-vitcam demo --run``. Needs a display; headless:

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/make_screenshots.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_vitcam.demo.app import MASK_NAME, DemoSession, open_viewer, wait_until_done
from napari_vitcam.demo.sample_data import DEFAULT_SEED
from napari_vitcam.demo.shipped import shipped_checkpoint

IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
WINDOW = (1500, 900)
EVALUATE_WIDTH = 580
TIMEOUT_S = 600


def shoot(ndisplay: int, seed: int, checkpoint: Path, canvas: Path, window: Path | None = None) -> None:
    """Open the demo, run it, and save the canvas (and the whole window, if asked)."""
    viewer, widget = open_viewer(seed, ndisplay, size=WINDOW)
    try:
        session = DemoSession(viewer, widget, run=True)
        session.start(checkpoint)
        if not wait_until_done(session, TIMEOUT_S) or session.failed:
            raise SystemExit(f"the demo did not finish in {ndisplay}D")
        viewer.screenshot(str(canvas), canvas_only=True)
        print(f"saved {canvas}")
        if window is not None:
            viewer.screenshot(str(window), canvas_only=False)
            print(f"saved {window}")
    finally:
        viewer.close()


def _wait_for(done, timeout_s: float) -> None:
    """Run the event loop until ``done()`` is true."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    poll = QTimer()
    poll.timeout.connect(lambda: loop.quit() if done() else None)
    poll.start(50)
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    poll.stop()
    if not done():
        raise SystemExit("the Evaluate section did not finish")


def shoot_evaluate(seed: int, checkpoint: Path, path: Path) -> None:
    """The demo's heatmap evaluated three ways (the lesion mask; curves beside occlusion's; randomisation)."""
    viewer, widget = open_viewer(seed, 2, size=WINDOW)
    try:
        session = DemoSession(viewer, widget, run=True)
        session.start(checkpoint)
        if not wait_until_done(session, TIMEOUT_S) or session.failed:
            raise SystemExit("the demo did not finish")
        panel = widget.evaluate
        panel.setChecked(True)
        panel.choose_labels(viewer.layers[MASK_NAME])
        panel.occlusion_check.setChecked(True)
        for start, kind in ((panel.score_mask, "mask"), (panel.check_model, "model"), (panel.check_chance, "chance")):
            if not start():
                raise SystemExit(f"the Evaluate section could not start {kind}")
            _wait_for(lambda kind=kind: not panel.busy and kind in panel.results, TIMEOUT_S)
        body = panel.body  # the whole section, as if the dock were tall enough not to scroll
        body.resize(EVALUATE_WIDTH, body.sizeHint().height())
        if not body.grab().save(str(path)):
            raise SystemExit(f"could not save {path}")
        print(f"saved {path}")
    finally:
        viewer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=IMAGES, help=f"folder for the PNGs (default {IMAGES})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="demo volume seed")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint (default: the shipped demo model)")
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint or shipped_checkpoint()
    if not checkpoint.is_file():
        print(f"no checkpoint at {checkpoint}: train it with 'napari-vitcam train-demo' first", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    shoot(2, args.seed, checkpoint, args.out / "demo_2d.png")
    shoot(3, args.seed, checkpoint, args.out / "demo_3d.png", window=args.out / "widget.png")
    shoot_evaluate(args.seed, checkpoint, args.out / "evaluate.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
