"""``napari-vitcam`` command line: the demo, demo training/evaluation, and headless explanations.

Each subcommand lives in its own module and is imported only when called, so
``napari-vitcam explain`` never imports Qt or napari.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

SUBCOMMANDS = {
    "demo": ("napari_vitcam.demo.app", "open napari with a demo volume, its lesion mask and the widget"),
    "explain": ("napari_vitcam.cli.explain", "explain a volume file with a checkpoint, without a GUI"),
    "batch": ("napari_vitcam.cli.batch", "explain a folder, glob or CSV of scans on Dask, resumable"),
    "evaluate": ("napari_vitcam.cli.evaluate", "score a model's heatmaps against masks, the model and chance"),
    "train-demo": ("napari_vitcam.demo.train", "train the demo ViT on generated volumes"),
    "evaluate-demo": ("napari_vitcam.demo.evaluate", "measure where the demo model's heatmaps point"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="napari-vitcam",
        description="Grad-CAM explanations for 3D Vision Transformers.",
        epilog="Run 'napari-vitcam COMMAND --help' for a command's options.",
    )
    parser.add_argument(
        "command", choices=sorted(SUBCOMMANDS), help="; ".join(f"{k}: {v[1]}" for k, v in SUBCOMMANDS.items())
    )
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    args = parser.parse_args(argv[:1])
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    try:
        return int(module.main(argv[1:]) or 0)
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback through whatever was running
        print(f"\nnapari-vitcam {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (`| head`): the work is done, the reader wants no more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush does not fail again
        return 141  # what a shell reports for a command ended by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
