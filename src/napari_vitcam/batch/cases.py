"""What a batch explains: the cases (one scan each) found in a folder, a glob or a CSV, and the run's settings.

Both are small frozen dataclasses of paths and strings: they are what a Dask
worker is sent (never arrays); the worker reads the scan itself.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from napari_vitcam.batch.ledger import HEATMAPS_FOLDER, THUMBNAILS_FOLDER
from napari_vitcam.core.errors import InputError
from napari_vitcam.volumes.base import path_suffix
from napari_vitcam.volumes.registry import READERS

#: Bumped when what a finished case holds changes, so that older ledgers are redone.
LEDGER_VERSION = 1
GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class Case:
    """One scan to explain.

    Args:
        id: stable name of the case (a digest of its path and key); the ledger file's name.
        path: the scan: a volume file or a DICOM series folder.
        name: the heatmap's file name without its suffix (unique in the batch).
        key: the array to take from an ``.npz`` holding several.
        label: the expected class (name or index), from a CSV's ``label`` column.
        mask: a mask (or labels) file on the scan's voxel grid, from a CSV's ``mask`` column.
    """

    id: str
    path: str
    name: str
    key: str | None = None
    label: str | None = None
    mask: str | None = None

    def record_fields(self) -> dict[str, str | None]:
        """What a case's ledger record says of the case itself (``case`` is its id)."""
        return {
            "case": self.id,
            "path": self.path,
            "name": self.name,
            "key": self.key,
            "label": self.label,
            "mask": self.mask,
        }


@dataclass(frozen=True)
class BatchSettings:
    """Everything, besides the scan, that decides a case's result; what the workers are sent.

    Args:
        checkpoint: the checkpoint file or bundle folder (a path the workers can read).
        checkpoint_sha256: the digest of every file of it, as :func:`load_checkpoint` reports them.
        outdir: the batch's output folder (shared by every worker).
        trust: allow full unpickling / a bundle's code.
        method: the explainer (``gradcam``...) or ``auto`` (each worker's :func:`explain_volume` chooses it
            for the model; its record names the method used). The ledger keys on this setting, so a rerun
            with ``auto`` skips the cases an ``auto`` run finished.
        target_layer: the layer explained (resolved), or None with ``auto`` and no layer given (the
            layer chosen with the method).
        class_idx: the explained class (name or index), None for the predicted one.
        upsample: how token maps become voxel maps.
        orientation: the model's frame (``RAS``...) or None for world order.
        nonfinite: ``error`` or ``replace``.
        tolerance: the pointing game's tolerance in voxels, None for half a token.
        device: ``auto`` (a worker of a local cluster takes its own GPU), ``cpu``, ``cuda:1``...
        torch_threads: torch intra-op threads per worker (None: leave torch's choice).
    """

    checkpoint: str
    checkpoint_sha256: dict[str, str]
    outdir: str
    trust: bool = False
    method: str = "gradcam"
    target_layer: str | None = ""
    class_idx: int | str | None = None
    upsample: str = "smooth"
    orientation: str | None = None
    nonfinite: str = "error"
    tolerance: float | None = None
    device: str = "auto"
    torch_threads: int | None = None

    @property
    def digest(self) -> str:
        """The hash of what decides a result (not where or how fast it runs: device, threads, outdir)."""
        decisive = {
            "version": LEDGER_VERSION,
            "checkpoint_sha256": dict(sorted(self.checkpoint_sha256.items())),
            "method": self.method,
            "target_layer": self.target_layer,
            "class_idx": self.class_idx,
            "upsample": self.upsample,
            "orientation": self.orientation,
            "nonfinite": self.nonfinite,
            "tolerance": self.tolerance,
        }
        return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()

    @property
    def model_key(self) -> str:
        """Which loaded model a worker may reuse: the checkpoint, its digests and how it is loaded."""
        loading = {"path": self.checkpoint, "sha": self.checkpoint_sha256, "trust": self.trust}
        return hashlib.sha256(json.dumps(loading, sort_keys=True).encode()).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reader_suffixes() -> tuple[str, ...]:
    return tuple(s for reader in READERS for s in reader.suffixes)


def _stem(path: Path) -> str:
    suffix = path_suffix(path, _reader_suffixes())
    name = path.name
    return name[: len(name) - len(suffix)] if suffix else (path.stem or name)


def _case_id(path: Path, key: str | None) -> str:
    return hashlib.sha256(f"{path}\0{key or ''}".encode()).hexdigest()[:16]


def _is_volume_candidate(path: Path) -> bool:
    """A file with a volume suffix, or a folder that holds a DICOM series."""
    if path.name.startswith("."):
        return False
    if path.is_file():
        return path_suffix(path, _reader_suffixes()) is not None
    if path.is_dir():
        return any(reader.accepts_directories and reader.can_read(path) for reader in READERS)
    return False


def _from_csv(table: Path) -> list[tuple[Path, str | None, str | None, str | None]]:
    with table.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        if "path" not in columns:
            found = ", ".join(columns) or "none"
            raise InputError(f"{table.name} has no 'path' column (columns: {found}): add a header row naming it")
        rows = []
        for number, raw in enumerate(reader, start=2):
            row = {str(k).strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
            if not row.get("path"):
                raise InputError(f"{table.name} line {number} has an empty path: fill it in or delete the line")
            path = Path(row["path"]).expanduser()
            path = path if path.is_absolute() else table.parent / path
            mask = row.get("mask") or None
            if mask is not None:
                mask_path = Path(mask).expanduser()
                mask = str((mask_path if mask_path.is_absolute() else table.parent / mask_path).resolve())
            rows.append((path, row.get("key") or None, row.get("label") or None, mask))
    if not rows:
        raise InputError(f"{table.name} lists no scans: add one row per scan under the header")
    return rows


def _check_apart(
    outdir: Path, folder: Path | None, rows: list[tuple[Path, str | None, str | None, str | None]]
) -> None:
    """Refuse an output folder that is the input folder, lies inside it or holds it, or mixes with the scans.

    Args:
        outdir: the batch's output folder (resolved).
        folder: the input folder, when INPUTS is a folder.
        rows: the scans found (paths not yet resolved).
    """
    remedy = "choose an output folder outside the input folder (e.g. beside it): the batch never writes into its inputs"
    if folder is not None:
        if outdir == folder:
            raise InputError(f"the output folder {outdir} is the input folder: {remedy}")
        if folder in outdir.parents:
            raise InputError(f"the output folder {outdir} is inside the input folder {folder}: {remedy}")
        if outdir in folder.parents:
            raise InputError(f"the input folder {folder} is inside the output folder {outdir}: {remedy}")
    for path, *_ in rows:
        scan = path.resolve()
        if outdir == scan.parent:
            raise InputError(
                f"the output folder {outdir} holds the scan {scan.name}: choose an output folder apart from the scans"
            )
        if scan == outdir or scan in outdir.parents:
            raise InputError(
                f"the output folder {outdir} is inside the scan {scan}: choose an output folder apart from the scans"
            )
        if outdir in scan.parents:
            raise InputError(
                f"the scan {scan} is inside the output folder {outdir}: choose an output folder apart from the scans"
            )


def find_cases(inputs: str | Path | list[str | Path], *, outdir: Path | None = None) -> list[Case]:
    """The cases of a batch.

    Args:
        inputs: a folder (every volume file in it and every DICOM series folder directly under it),
            a glob pattern (``scans/**/*.nii.gz``), a CSV file with a ``path`` column (optionally
            ``label``, ``mask`` and ``key``; relative paths are relative to the CSV), or a list of paths.
        outdir: the batch's output folder. It may not be the input folder, lie inside it or hold
            it, nor hold a scan; a glob pattern's matches in its ``heatmaps`` and ``thumbnails``
            folders (an earlier run's outputs) are left out.

    Raises:
        InputError: nothing found, a CSV without a path column, or an output folder mixed with the
            inputs (one line, with the remedy).
    """
    rows: list[tuple[Path, str | None, str | None, str | None]]
    folder: Path | None = None
    pattern = False
    if isinstance(inputs, (list, tuple)):
        rows = [(Path(p).expanduser(), None, None, None) for p in inputs]
        what = "the list"
    else:
        source = Path(inputs).expanduser()
        text = str(inputs)
        if source.is_file() and source.suffix.lower() in (".csv", ".tsv"):
            rows = _from_csv(source)
            what = source.name
        elif source.is_dir():
            folder = source.resolve()
            rows = [(p, None, None, None) for p in sorted(source.iterdir()) if _is_volume_candidate(p)]
            what = f"the folder {source}"
        elif not source.exists() and GLOB_CHARACTERS & set(text):
            matches = sorted(glob.glob(str(source), recursive=True))
            rows = [(Path(p), None, None, None) for p in matches if not Path(p).name.startswith(".")]
            what = f"the pattern {text}"
            pattern = True
        elif source.is_file():
            rows = [(source, None, None, None)]
            what = source.name
        else:
            raise InputError(
                f"{text} does not exist: give a folder of scans, a glob pattern or a CSV with a path column"
            )
    if outdir is not None:
        out = Path(outdir).expanduser().resolve()
        if pattern:  # a pattern may match the heatmaps an earlier run wrote: those are no scans
            own = [out / HEATMAPS_FOLDER, out / THUMBNAILS_FOLDER]
            rows = [r for r in rows if not any(f in r[0].resolve().parents for f in own)]
        _check_apart(out, folder, rows)
    if not rows:
        raise InputError(f"found no scans in {what}: give .npy, .npz, .nii, .nii.gz files or DICOM series folders")
    resolved = [(p.resolve(), key, label, mask) for p, key, label, mask in rows]
    ids = [_case_id(p, key) for p, key, _, _ in resolved]
    repeated = [p for (p, key), n in Counter((p, k) for p, k, _, _ in resolved).items() if n > 1]
    if repeated:
        raise InputError(f"{repeated[0]} is listed more than once: list each scan once")
    stems = Counter(_stem(p) for p, *_ in resolved)
    cases = []
    for (path, key, label, mask), case_id in zip(resolved, ids, strict=True):
        stem = _stem(path) + (f"-{key}" if key else "")
        name = stem if stems[_stem(path)] == 1 and not key else f"{stem}-{case_id[:8]}"
        cases.append(Case(id=case_id, path=str(path), name=name, key=key, label=label, mask=mask))
    return cases
