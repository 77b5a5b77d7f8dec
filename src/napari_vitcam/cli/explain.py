"""``napari-vitcam explain``: a heatmap for a volume file, with no GUI."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_vitcam.core.errors import VitcamError
from napari_vitcam.core.vocabulary import UPSAMPLE_MODES


def read_volume(path: Path) -> np.ndarray:
    """A volume from .npy, or the first array of an .npz."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return data[data.files[0]]
    raise VitcamError(f"cannot read {path.name}: give a .npy or .npz volume")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="napari-vitcam explain", description=__doc__)
    parser.add_argument("checkpoint", type=Path, help="native checkpoint, MONAI bundle folder or weights file")
    parser.add_argument("volume", type=Path, help="volume as .npy or .npz, (D, H, W) or (C, D, H, W)")
    parser.add_argument("-o", "--output", type=Path, default=None, help="heatmap .npy (default: VOLUME.heatmap.npy)")
    parser.add_argument("--target", default=None, help="target layer (default: the checkpoint's recommendation)")
    parser.add_argument("--class", dest="class_idx", default=None, help="class name or index (default: predicted)")
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--upsample", default="smooth", choices=UPSAMPLE_MODES)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--trust", action="store_true", help="allow full unpickling (only for files you trust)")
    args = parser.parse_args(argv)

    from napari_vitcam.models.checkpoint import load_checkpoint
    from napari_vitcam.pipeline.explain import explain_volume

    class_idx = args.class_idx
    if class_idx is not None and class_idx.lstrip("-").isdigit():
        class_idx = int(class_idx)
    try:
        loaded = load_checkpoint(args.checkpoint, trust=args.trust)
        result = explain_volume(
            loaded,
            read_volume(args.volume),
            target_layer=args.target,
            class_idx=class_idx,
            method=args.method,
            upsample=args.upsample,
            device=args.device,
        )
    except (VitcamError, OSError) as error:
        print(f"napari-vitcam explain: {error}", file=sys.stderr)
        return 1
    output = args.output or args.volume.with_suffix(".heatmap.npy")
    np.save(output, result.heatmap)
    summary = {
        "heatmap": str(output),
        "predicted": result.predicted_name,
        "explained_class": result.class_name,
        "target_layer": result.target_layer,
        "raw_max": result.raw_max,
        "probabilities": dict(result.ranked_probabilities),
        "device": result.device,
    }
    print(json.dumps(summary, indent=2))
    return 0
