"""Make the screenshots of docs/usage.md from the demo: a 2D slice, the 3D rendering, the whole window.

Runs the same code as ``napari-vitcam demo --run``. Needs a display; headless:

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/make_screenshots.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_vitcam.demo.app import DemoSession, open_viewer, wait_until_done
from napari_vitcam.demo.sample_data import DEFAULT_SEED
from napari_vitcam.demo.shipped import shipped_checkpoint

IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
WINDOW = (1500, 900)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
