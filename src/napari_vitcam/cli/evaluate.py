"""``napari-vitcam evaluate``: how good are a model's heatmaps, over volumes with known masks?

Volumes and masks are paired by file name (``case1.nii.gz`` in ``--volumes``
with ``case1.nii.gz`` or ``case1.npy`` in ``--masks``). Everything is checked
before the model runs: every volume and mask is read, each volume has its
mask, shapes (and, with geometry, affines) agree, no volume holds NaN/Inf
voxels (unless ``--nonfinite replace``), the output is not an input and does
not exist (unless ``--force``); once the model is loaded, ``--class``,
``--target`` and ``--device`` are checked against it. Then for each case the
volume is explained (``--method auto``: the explainer chosen for this kind of
model) and the map is evaluated:

* against the mask: pointing game (strict, and within half a patch), energy
  pointing, best-threshold IoU, per label (distances in mm where the files
  have geometry, else voxels);
* against the model: deletion and insertion AUCs against random orders, with
  the baseline recorded (and those of other methods' maps with ``--compare``,
  e.g. ``--compare occlusion``);
* against chance: the cascading randomisation test (``--no-randomization`` skips it).

One CSV row per case and label (written atomically), and a short summary on
stdout. See docs/evaluation.md for what each number means.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_vitcam.cli.options import add_device, add_nonfinite, add_target_and_class, add_trust
from napari_vitcam.core.errors import InputError, VitcamError
from napari_vitcam.core.vocabulary import UPSAMPLE_MODES, one_line
from napari_vitcam.engine.explainers import EXPLAINERS, get_explainer
from napari_vitcam.engine.introspect import resolve_module
from napari_vitcam.evaluation.faithfulness import BASELINES
from napari_vitcam.pipeline.checks import NonFinite, check_volume_finite, class_index
from napari_vitcam.pipeline.devices import pick_device
from napari_vitcam.volumes.base import Volume, path_suffix
from napari_vitcam.volumes.geometry import permuted, world_view
from napari_vitcam.volumes.registry import READERS, read_volume, reader_for

PROG = "napari-vitcam evaluate"

COLUMNS = (
    "case",
    "volume",
    "mask",
    "label",
    "method",
    "target_layer",
    "class",
    "probability",
    "predicted",
    "voxels",
    "pointing_strict",
    "pointing_tolerant",
    "tolerance",
    "distance_unit",
    "peak_distance",
    "energy",
    "iou",
    "iou_threshold",
    "baseline",
    "deletion_auc",
    "deletion_random_auc",
    "deletion_beats_random",
    "insertion_auc",
    "insertion_random_auc",
    "insertion_beats_random",
    "randomization_final",
    "randomization_survives",
    "randomization_steps",
)


def columns(compared: Sequence[str] = ()) -> tuple[str, ...]:
    """The CSV's columns: :data:`COLUMNS`, and each compared method's AUCs after the map's."""
    extra = tuple(f"{mode}_auc_{name}" for name in compared for mode in ("deletion", "insertion"))
    at = COLUMNS.index("insertion_beats_random") + 1
    return COLUMNS[:at] + extra + COLUMNS[at:]


@dataclass(frozen=True)
class Case:
    """A volume and its mask, read and checked, in world axis order (as napari shows them)."""

    name: str
    volume_path: Path
    mask_path: Path
    volume: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float, float] | None
    affine: np.ndarray | None = None
    """The voxel-to-RAS affine of ``volume``'s axes (as ``napari-vitcam explain`` gives it), or None."""


def case_name(path: Path) -> str:
    """The file's name without its format's suffix (``case1.nii.gz`` -> ``case1``)."""
    if path.is_dir():
        return path.name
    suffix = path_suffix(path, reader_for(path).suffixes) or path.suffix
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def _readable(path: Path) -> bool:
    if path.name.startswith("."):
        return False
    return any(reader.can_read(path) for reader in READERS)


def list_cases(folder: Path, what: str) -> dict[str, Path]:
    """The readable volumes in ``folder`` by case name."""
    if not folder.is_dir():
        raise InputError(f"the {what} folder {folder} does not exist: give a folder of volume files")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not _readable(path):
            continue
        name = case_name(path)
        if name in found:
            raise InputError(f"two {what} files for case {name!r} ({found[name].name}, {path.name}): keep one per case")
        found[name] = path
    if not found:
        raise InputError(f"no volume files in {folder}: give .npy, .npz, NIfTI or DICOM files")
    return found


def _spacing(view_affine: np.ndarray | None) -> tuple[float, float, float] | None:
    if view_affine is None:
        return None
    sizes = np.linalg.norm(np.asarray(view_affine)[:3, :3], axis=0)
    return (float(sizes[0]), float(sizes[1]), float(sizes[2]))


def _mask_array(mask: Volume, name: str) -> np.ndarray:
    values = np.asarray(mask.array)
    if values.dtype.kind == "f":
        if not np.isfinite(values).all() or not np.array_equal(values, np.round(values)):
            raise InputError(f"case {name!r}: the mask holds non-integer values: give a label mask (0 = background)")
        values = values.astype(np.int64)
    elif values.dtype.kind not in "biu":
        raise InputError(f"case {name!r}: the mask has type {values.dtype}: give integer labels (0 = background)")
    if not values.any():
        raise InputError(f"case {name!r}: the mask is empty: give a mask with at least one labelled voxel")
    return values


def _check_finite(name: str, values: np.ndarray, nonfinite: NonFinite) -> None:
    try:
        check_volume_finite(values, nonfinite)
    except VitcamError as error:
        raise type(error)(f"case {name!r}: {error}") from None


def read_case(name: str, volume_path: Path, mask_path: Path, nonfinite: NonFinite = "error") -> Case:
    """Read a volume and its mask and check that they lie on the same grid (and, with
    ``nonfinite="error"``, that the volume has no NaN/Inf voxel)."""
    volume = read_volume(volume_path)
    mask = read_volume(mask_path)
    if mask.array.ndim != 3:
        raise InputError(f"case {name!r}: the mask has shape {mask.array.shape}: give a 3D label mask")
    spatial = volume.array.shape[-3:]
    if volume.array.ndim not in (3, 4):
        raise InputError(f"case {name!r}: the volume has shape {volume.array.shape}: give (D, H, W) or (C, D, H, W)")
    if tuple(mask.array.shape) != tuple(spatial):
        raise InputError(
            f"case {name!r}: the mask has shape {mask.array.shape} but the volume {tuple(spatial)}: "
            "give a mask on the volume's voxel grid"
        )
    if volume.affine is not None and mask.affine is not None and not np.allclose(volume.affine, mask.affine, atol=1e-3):
        raise InputError(
            f"case {name!r}: the mask's affine differs from the volume's: resample the mask onto the volume's grid"
        )
    _check_finite(name, np.asarray(volume.array), nonfinite)
    view = world_view(volume.array, volume.affine)
    view_affine = volume.affine
    if volume.affine is not None and volume.array.ndim == 3:
        view_affine = permuted(volume.affine, view.order)  # the affine of the array as napari shows it
    mask_view = world_view(_mask_array(mask, name), volume.affine if volume.array.ndim == 3 else None)
    return Case(name, volume_path, mask_path, view.array, mask_view.array, _spacing(view.affine), view_affine)


@dataclass(frozen=True)
class CaseFiles:
    """A case's files, read and checked once; :func:`read_case` reads them again when the case's turn comes."""

    name: str
    volume_path: Path
    mask_path: Path
    shape: tuple[int, ...]
    """The volume's shape in world axis order (as napari shows it)."""

    def read(self, nonfinite: NonFinite = "error") -> Case:
        """The case's arrays, as :func:`read_case` gives them."""
        return read_case(self.name, self.volume_path, self.mask_path, nonfinite)


def pair_cases(volumes: Path, masks: Path, nonfinite: NonFinite = "error") -> list[CaseFiles]:
    """Every volume with its mask, read and checked (before any model runs).

    Only the paths and shapes are kept: a cohort's arrays are never all in
    memory at once, each case is read again when it is evaluated.
    """
    if volumes.is_dir() and masks.is_dir() and volumes.resolve() == masks.resolve():
        raise InputError(f"--masks names the --volumes folder {volumes}: give the folder of the label masks")
    found = list_cases(volumes, "volume")
    mask_files = list_cases(masks, "mask")
    missing = [name for name in found if name not in mask_files]
    if missing:
        listed = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
        raise InputError(
            f"no mask in {masks} for {len(missing)} case(s): {listed}: give each a mask with the same file name"
        )
    paired = []
    for name, path in found.items():
        case = read_case(name, path, mask_files[name], nonfinite)
        paired.append(CaseFiles(name, path, mask_files[name], tuple(case.volume.shape)))
        del case
    return paired


def check_output(output: Path, inputs: Sequence[Path], force: bool) -> None:
    """The output is a .csv in an existing folder, is no input, and exists only with ``force``."""
    if output.suffix.lower() != ".csv":
        raise InputError(f"the output {output.name} is not a .csv file: name it e.g. results.csv")
    if output.parent.exists() and not output.parent.is_dir():
        raise InputError(f"{output.parent} is a file, not a folder: choose another output")
    if not output.parent.resolve().is_dir():
        raise InputError(f"the output folder {output.parent} does not exist: create it first")
    resolved = output.resolve()
    for path in inputs:
        if resolved == Path(path).resolve():
            raise InputError(f"the output {output} is an input file: choose another name")
    if output.exists() and not force:
        raise InputError(f"{output} exists: pass --force to replace it, or choose another name with -o")


def write_csv(output: Path, rows: Sequence[dict[str, object]], fieldnames: Sequence[str] = COLUMNS) -> None:
    """Write ``rows`` to ``output`` atomically (a temporary file beside it, then a rename)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    handle, temporary = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            file.write(buffer.getvalue())
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _cell(value: object) -> object:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def evaluate_case(loaded, case: Case, args: argparse.Namespace) -> list[dict[str, object]]:
    """Explain one case and evaluate its map; one row per label."""
    from napari_vitcam.evaluation.explained import (
        against_chance,
        against_mask,
        against_model,
        explain_alike,
        patch_tolerance,
    )
    from napari_vitcam.pipeline.explain import explain_volume

    explanation = explain_volume(
        loaded,
        case.volume,
        target_layer=args.target,
        class_idx=args.class_idx,
        method=args.method,
        upsample=args.upsample,
        device=args.device,
        affine=case.affine,
        nonfinite=args.nonfinite,
    )
    masks = against_mask(explanation, case.mask, spacing=case.spacing)
    compared = {
        name: explain_alike(loaded, case.volume, explanation, name, nonfinite=args.nonfinite, affine=case.affine)
        for name in args.compare
    }
    curves = against_model(
        loaded,
        case.volume,
        explanation,
        baseline=args.baseline,
        reference=args.reference_volume,
        steps=args.steps,
        random_orders=args.random_orders,
        batch_size=args.batch_size,
        nonfinite=args.nonfinite,
        affine=case.affine,
        compared=compared,
    )
    chance = (
        None
        if args.no_randomization
        else against_chance(loaded, case.volume, explanation, nonfinite=args.nonfinite, affine=case.affine)
    )
    common: dict[str, object] = {
        "case": case.name,
        "volume": case.volume_path.name,
        "mask": case.mask_path.name,
        "method": explanation.method,
        "target_layer": explanation.target_layer,
        "class": explanation.class_name,
        "probability": float(explanation.probabilities[explanation.class_idx]),
        "predicted": explanation.predicted_name,
        "distance_unit": "mm" if case.spacing is not None else "voxels",
        **curves.summary(),
    }
    common = {k: v for k, v in common.items() if k in columns(args.compare)}
    if chance is not None:
        common["randomization_final"] = chance.final_correlation
        common["randomization_survives"] = chance.survives
        common["randomization_steps"] = "; ".join(f"{s.randomized}: {s.correlation:.3f}" for s in chance.steps)
    rows = []
    tolerance = patch_tolerance(explanation, case.spacing)
    for scores in masks:
        values = scores.as_dict()
        rows.append(
            {
                **common,
                "label": scores.label,
                "voxels": scores.voxels,
                "tolerance": tolerance,
                **{k: values[k] for k in ("pointing_strict", "pointing_tolerant", "peak_distance", "energy", "iou")},
                "iou_threshold": values["iou_threshold"],
            }
        )
    return rows


def summary(rows: Sequence[dict[str, object]], cases: int) -> str:
    """A few lines: means over cases and labels, and how often the map beat random orders or survived."""

    def mean(key: str) -> float:
        return float(np.mean([float(r[key]) for r in rows]))  # type: ignore[arg-type]

    def share(key: str) -> str:
        values = [r[key] for r in rows if r.get(key) is not None]
        return f"{sum(bool(v) for v in values)}/{len(values)}"

    lines = [
        f"{cases} case(s), {len(rows)} label(s); baseline {rows[0]['baseline']}",
        f"pointing game: strict {mean('pointing_strict'):.3f}, within half a patch {mean('pointing_tolerant'):.3f}",
        f"energy inside the mask {mean('energy'):.3f}; best-threshold IoU {mean('iou'):.3f}",
        f"deletion AUC {mean('deletion_auc'):.3f} (random {mean('deletion_random_auc'):.3f}), "
        f"beats random on {share('deletion_beats_random')}",
        f"insertion AUC {mean('insertion_auc'):.3f} (random {mean('insertion_random_auc'):.3f}), "
        f"beats random on {share('insertion_beats_random')}",
    ]
    for key in rows[0]:
        if key.startswith("deletion_auc_"):
            name = key.removeprefix("deletion_auc_")
            lines.append(
                f"{name} map for comparison: deletion AUC {mean(key):.3f}, insertion AUC {mean('insertion_auc_' + name):.3f}"
            )
    if any("randomization_survives" in r for r in rows):
        lines.append(
            f"maps that survive randomisation (do not depend on the trained weights): {share('randomization_survives')}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path, help="native checkpoint, MONAI bundle folder or weights file")
    parser.add_argument("--volumes", type=Path, required=True, help="folder of volumes (.npy, .npz, NIfTI, DICOM)")
    parser.add_argument("--masks", type=Path, required=True, help="folder of label masks, same file names")
    parser.add_argument(
        "--method",
        default="gradcam",
        help=f"explainer: auto (the one chosen for this kind of model, see docs/evaluation.md) or one of "
        f"{', '.join(EXPLAINERS)} (default: gradcam)",
    )
    add_target_and_class(parser)
    parser.add_argument("--upsample", default="smooth", choices=UPSAMPLE_MODES)
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="METHOD",
        help="also draw the curves of this method's map, e.g. occlusion (repeatable)",
    )
    parser.add_argument("--baseline", default="blur", choices=BASELINES, help="what replaces removed patches")
    parser.add_argument("--reference", type=Path, default=None, help="reference volume for --baseline reference")
    parser.add_argument("--steps", type=int, default=16, help="points per deletion/insertion curve, less one")
    parser.add_argument("--random-orders", type=int, default=3, help="random orders in the band")
    parser.add_argument("--batch-size", type=int, default=8, help="perturbed inputs per forward pass")
    parser.add_argument("--no-randomization", action="store_true", help="skip the randomisation test")
    add_nonfinite(parser)
    add_device(parser)
    parser.add_argument("-o", "--output", type=Path, default=Path("results.csv"), help="CSV file (default results.csv)")
    parser.add_argument("--force", action="store_true", help="replace the output file if it exists")
    add_trust(parser)
    args = parser.parse_args(argv)
    if args.class_idx is not None and args.class_idx.lstrip("-").isdigit():
        args.class_idx = int(args.class_idx)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        for option in ("steps", "random_orders", "batch_size"):
            if getattr(args, option) < 1:
                raise InputError(f"--{option.replace('_', '-')} {getattr(args, option)}: give at least 1")
        if args.method != "auto" and args.method not in EXPLAINERS:  # refused before anything is read
            raise InputError(f"unknown method {args.method!r}: choose auto or one of {', '.join(EXPLAINERS)}")
        for method in args.compare:
            get_explainer(method)  # an unknown method to compare with too
        if args.method in args.compare or len(set(args.compare)) < len(args.compare):
            raise InputError("--compare names a method twice or the --method itself: name each other method once")
        pick_device(args.device)  # an unknown or absent device too
        if args.baseline == "reference" and args.reference is None:
            raise InputError("--baseline reference needs --reference FILE (e.g. a healthy scan on the same grid)")
        cases = pair_cases(args.volumes, args.masks, args.nonfinite)
        inputs = [args.checkpoint, *(c.volume_path for c in cases), *(c.mask_path for c in cases)]
        if args.reference is not None:
            inputs.append(args.reference)
        check_output(args.output, inputs, args.force)
        args.reference_volume = None
        if args.reference is not None:
            reference = read_volume(args.reference)
            args.reference_volume = world_view(reference.array, reference.affine).array
            for files in cases:
                if files.shape != args.reference_volume.shape:
                    raise InputError(
                        f"the reference has shape {args.reference_volume.shape} but case {files.name!r} "
                        f"{files.shape}: give a reference on the volumes' grid"
                    )
        from napari_vitcam.models.checkpoint import load_checkpoint

        loaded = load_checkpoint(args.checkpoint, trust=args.trust)
        class_index(args.class_idx, loaded.spec.class_names)  # the model's classes and layers, before any case
        if args.target is not None:
            resolve_module(loaded.model, args.target)
        rows: list[dict[str, object]] = []
        for number, files in enumerate(cases, 1):
            print(f"\r{number}/{len(cases)} {files.name}", end="", file=sys.stderr, flush=True)
            try:
                rows += evaluate_case(loaded, files.read(args.nonfinite), args)
            except VitcamError as error:
                print(file=sys.stderr)
                print(f"{PROG}: case {files.name!r}: {one_line(error, limit=400)}", file=sys.stderr)
                return 1
        print(file=sys.stderr)
        write_csv(args.output, rows, columns(args.compare))
    except (VitcamError, OSError) as error:
        print(f"{PROG}: {one_line(error, limit=400)}", file=sys.stderr)
        return 1
    print(summary(rows, len(cases)))
    print(f"per-case metrics: {args.output}")
    return 0
