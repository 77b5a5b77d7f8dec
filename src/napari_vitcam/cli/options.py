"""Options the commands share, declared once: what to explain, the device, non-finite voxels, trust."""

from __future__ import annotations

import argparse

from napari_vitcam.pipeline.checks import NONFINITE_CHOICES

NONFINITE_HELP = (
    "NaN/Inf voxels: refuse the volume (error, the default) or replace them (NaN by 0, ±Inf by the volume's "
    "finite extremes)"
)


def add_target_and_class(parser: argparse.ArgumentParser) -> None:
    """``--target`` (a layer) and ``--class`` (a name or an index)."""
    parser.add_argument("--target", default=None, help="target layer (default: the checkpoint's recommendation)")
    parser.add_argument("--class", dest="class_idx", default=None, help="class name or index (default: predicted)")


def add_nonfinite(parser: argparse.ArgumentParser, help_text: str = NONFINITE_HELP) -> None:
    """``--nonfinite error|replace``."""
    parser.add_argument("--nonfinite", default="error", choices=NONFINITE_CHOICES, help=help_text)


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device`` (auto: cuda, then mps, then cpu)."""
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1...")


def add_trust(parser: argparse.ArgumentParser) -> None:
    """``--trust``: allow full unpickling of the checkpoint."""
    parser.add_argument("--trust", action="store_true", help="allow full unpickling (only for files you trust)")
