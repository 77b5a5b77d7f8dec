"""``napari-vitcam explain``: a heatmap for a volume file, with no GUI.

Everything that can be checked without the model is checked before it is
loaded: the volume is read (``.npy``, ``.npz``, NIfTI, DICOM series) and
its voxels are finite (unless ``--nonfinite replace``), the device exists, the
output's format, folder and name are checked (never an input, never an
existing file without ``--force``). The heatmap is written atomically to
exactly the file named, with the volume's geometry where the format keeps it
(NIfTI), and the JSON summary names that file.

A volume with geometry (NIfTI, DICOM) is given to the model with its axes in
world order, exactly as the napari reader shows it, so the command line and
the widget explain the same array, together with its affine: a checkpoint
that declares an orientation or a spacing (or ``--orientation``) has the scan
reoriented and resampled to it. The heatmap is written back in the file's
own axis order, with the file's affine.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_vitcam.cli.options import add_device, add_nonfinite, add_target_and_class, add_trust
from napari_vitcam.core.errors import VitcamError
from napari_vitcam.core.vocabulary import UPSAMPLE_MODES, one_line
from napari_vitcam.engine.explainers import EXPLAINERS
from napari_vitcam.pipeline.checks import check_volume_finite
from napari_vitcam.pipeline.devices import pick_device
from napari_vitcam.pipeline.frame import ModelFrame
from napari_vitcam.pipeline.provenance import heatmap_provenance
from napari_vitcam.volumes.base import Volume, json_ready, path_suffix
from napari_vitcam.volumes.geometry import permuted, world_view
from napari_vitcam.volumes.registry import read_volume, reader_for, writer_suffixes
from napari_vitcam.volumes.writing import check_output, write_heatmap

PROG = "napari-vitcam explain"


def default_output(source: Path, volume: Volume) -> Path:
    """Beside the input: ``NAME.heatmap.nii.gz`` for a volume with geometry, else ``NAME.heatmap.npy``."""
    source = Path(source)
    if source.is_dir():
        stem = source.name
    else:
        suffix = path_suffix(source, reader_for(source).suffixes) or source.suffix
        stem = source.name[: len(source.name) - len(suffix)] if suffix else source.name
    ending = ".heatmap.nii.gz" if volume.affine is not None else ".heatmap.npy"
    return source.parent / f"{stem}{ending}"


def _model_axes(volume: Volume, preprocessing: dict[str, Any]) -> str:
    if volume.affine is None:
        return "file order (no geometry)"
    if preprocessing.get("frame"):
        return f"reoriented to {preprocessing['frame']}"
    return "world order (S, P, L), as napari shows it"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path, help="native checkpoint, MONAI bundle folder or weights file")
    parser.add_argument(
        "volume",
        type=Path,
        help=".npy/.npz ((D, H, W) or (C, D, H, W)), NIfTI (.nii, .nii.gz), or a DICOM series (folder or one file)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help=f"heatmap file, its suffix chooses the format: {', '.join(writer_suffixes())} "
        "(default: beside the volume, NAME.heatmap.nii.gz with geometry, else NAME.heatmap.npy)",
    )
    parser.add_argument("--force", action="store_true", help="replace the output file if it exists")
    parser.add_argument("--key", default=None, help="the array to explain in an .npz holding several")
    add_target_and_class(parser)
    parser.add_argument(
        "--method",
        default="gradcam",
        choices=("auto", *EXPLAINERS),
        help="explainer (default: gradcam; auto: the one chosen for this kind of model, see docs/evaluation.md)",
    )
    parser.add_argument("--upsample", default="smooth", choices=UPSAMPLE_MODES)
    add_device(parser)
    parser.add_argument(
        "--orientation",
        default=None,
        metavar="CODES",
        help="the orientation the model was trained on, e.g. RAS: a NIfTI/DICOM scan is reoriented to it "
        "(default: the checkpoint's, else the axes in world order S, P, L, as napari shows them)",
    )
    add_nonfinite(parser)
    add_trust(parser)
    args = parser.parse_args(argv)

    class_idx = args.class_idx
    if class_idx is not None and class_idx.lstrip("-").isdigit():
        class_idx = int(class_idx)
    try:
        volume = read_volume(args.volume, key=args.key)
        check_volume_finite(volume.array, args.nonfinite)  # NaN/Inf voxels and the device: before the model loads
        pick_device(args.device)
        output = args.output if args.output is not None else default_output(args.volume, volume)
        orientation = ModelFrame(args.orientation) if args.orientation else None  # checked before anything is loaded
        read_from = [Path(p) for p in volume.metadata.get("paths", ())]  # every file of a DICOM series
        inputs = (args.volume, args.checkpoint, *read_from)
        writer = check_output(output, inputs=inputs, force=args.force, source=volume)

        from napari_vitcam.models.checkpoint import load_checkpoint
        from napari_vitcam.pipeline.explain import explain_volume

        loaded = load_checkpoint(args.checkpoint, trust=args.trust)
        # --orientation replaces the checkpoint's orientation and keeps its spacing
        frame = None if orientation is None else ModelFrame(orientation.orientation, loaded.spec.input.spacing)
        # the same array napari shows and explains, with its own affine: the frame (if any) decides the rest
        view = world_view(volume.array, volume.affine)
        view_affine = volume.affine
        if volume.affine is not None and view.affine is not None and volume.array.ndim == 3:
            view_affine = permuted(volume.affine, view.order)
        result = explain_volume(
            loaded,
            view.array,
            target_layer=args.target,
            class_idx=class_idx,
            method=args.method,
            upsample=args.upsample,
            device=args.device,
            affine=view_affine,
            frame=frame,
            nonfinite=args.nonfinite,
        )
        written = write_heatmap(
            output,
            view.to_file(result.heatmap),
            affine=volume.affine,
            provenance=heatmap_provenance(result, loaded, volume),
            force=args.force,
            source=volume,
        )
    except (VitcamError, OSError) as error:
        print(f"{PROG}: {one_line(error, limit=400)}", file=sys.stderr)
        return 1
    summary = json_ready(
        {
            "heatmap": str(written),
            "format": writer.name,
            "volume": volume.describe(),
            "predicted": result.predicted_name,
            "explained_class": result.class_name,
            "method": result.method,
            "target_layer": result.target_layer,
            "raw_max": result.raw_max,
            "probabilities": dict(result.ranked_probabilities),
            "device": result.device,
            "model_input_axes": _model_axes(volume, result.preprocessing),
            "model_frame": {
                key: result.preprocessing[key]
                for key in ("frame", "model_spacing_mm", "volume_spacing_mm", "fit", "resampled_shape", "crop_start")
                if key in result.preprocessing
            },
            **({"frame_note": result.preprocessing["frame_note"]} if "frame_note" in result.preprocessing else {}),
        }
    )
    print(json.dumps(summary, indent=2, allow_nan=False))
    return 0
