"""What a Dask worker does for one case: read the scan, explain it, write the heatmap, thumbnail and record.

The worker is sent a :class:`~napari_vitcam.batch.cases.Case` and the
:class:`~napari_vitcam.batch.cases.BatchSettings` (paths and strings, never
arrays) and reads the scan itself.

**The worker cache.** A worker loads the model once and keeps it for the next
cases: :data:`_MODELS`, a module-level dict in the worker's process, keyed by
the worker (its address: several in-process workers keep one model each) and
by the checkpoint's path, digests and trust flag. It is the only state this
package keeps between calls; it is filled only by :func:`explain_case`, which
only a batch calls, holds one model per worker (a new checkpoint replaces the
old one) and is emptied by :func:`forget_models`.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_vitcam.batch.cases import BatchSettings, Case
from napari_vitcam.batch.ledger import (
    HEATMAPS_FOLDER,
    THUMBNAILS_FOLDER,
    atomic_write,
    file_digest,
    is_finished,
    read_record,
    write_record,
)
from napari_vitcam.batch.report import thumbnail
from napari_vitcam.core.errors import CheckpointError, InputError, VitcamError
from napari_vitcam.core.vocabulary import one_line
from napari_vitcam.evaluation.localisation import mask_scores
from napari_vitcam.models.checkpoint import load_checkpoint
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.pipeline.explain import VolumeExplanation, explain_volume
from napari_vitcam.pipeline.frame import ModelFrame
from napari_vitcam.pipeline.provenance import heatmap_provenance
from napari_vitcam.volumes.base import Volume
from napari_vitcam.volumes.geometry import world_view
from napari_vitcam.volumes.registry import read_volume
from napari_vitcam.volumes.writing import check_output, write_heatmap

_MODELS: dict[tuple[str, str], LoadedModel] = {}
"""The worker cache: (worker, model key) -> the loaded model. See the module's docstring."""
_MODELS_LOCK = threading.Lock()


def _worker() -> tuple[str, Any]:
    """(the worker's address, its name) inside a Dask worker; ("local", None) elsewhere."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return "local", None
    return str(worker.address), worker.name


def forget_models() -> None:
    """Empty this process's worker cache."""
    with _MODELS_LOCK:
        _MODELS.clear()


def cached_model(settings: BatchSettings) -> tuple[LoadedModel, bool]:
    """The worker's model for ``settings`` and whether this call loaded it.

    Raises:
        CheckpointError: the checkpoint changed since the batch started (its digests differ).
    """
    owner, _ = _worker()
    key = (owner, settings.model_key)
    with _MODELS_LOCK:
        loaded = _MODELS.get(key)
        if loaded is not None:
            return loaded, False
        for old in [k for k in _MODELS if k[0] == owner]:
            del _MODELS[old]
        loaded = load_checkpoint(settings.checkpoint, trust=settings.trust, device="cpu")
        if dict(loaded.sha256) != dict(settings.checkpoint_sha256):
            raise CheckpointError(
                f"{Path(settings.checkpoint).name} changed since the batch started: rerun the batch to use the new file"
            )
        _MODELS[key] = loaded
        return loaded, True


def worker_device(requested: str) -> str:
    """The device this worker uses: with ``auto`` or ``cuda`` and several GPUs, a local cluster's worker N takes GPU N."""
    if requested not in ("auto", "cuda") or not torch.cuda.is_available():
        return requested
    count = torch.cuda.device_count()
    _, name = _worker()
    if count > 1 and isinstance(name, int):
        return f"cuda:{name % count}"
    return requested


def _class_value(value: int | str | None) -> int | str | None:
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


def _tolerance(settings: BatchSettings, result: VolumeExplanation) -> float:
    """The pointing game's tolerance in voxels: the setting, or half a token (the largest voxels-per-token)."""
    if settings.tolerance is not None:
        return float(settings.tolerance)
    shape = list(result.preprocessing.get("volume_shape", []))[-3:]
    grid = result.token_cam.shape[-3:]
    if len(shape) != 3 or len(grid) != 3:
        return 0.0
    return max(s / g for s, g in zip(shape, grid, strict=True)) / 2


def _read_mask(case: Case, volume: Volume) -> np.ndarray | None:
    """The case's mask (non-zero voxels) on the scan's grid, checked before the model runs."""
    if not case.mask:
        return None
    mask = read_volume(Path(case.mask)).array
    if mask.shape != volume.spatial_shape:
        raise InputError(
            f"the mask {Path(case.mask).name} has shape {mask.shape} but the scan has {volume.spatial_shape}: "
            "give a mask on the scan's voxel grid"
        )
    return np.asarray(mask) != 0


def _metrics(mask: np.ndarray, heatmap: np.ndarray, settings: BatchSettings, result) -> dict[str, float] | None:
    """The localisation metrics in voxels of the file's grid; None for an empty mask (nothing to point at)."""
    if not mask.any():
        return None
    scores = mask_scores(heatmap, mask, _tolerance(settings, result))
    return {k: v for k, v in scores.as_dict().items() if k not in ("label", "voxels")}


def _error_text(error: BaseException) -> str:
    if isinstance(error, (VitcamError, OSError)):
        return one_line(error, limit=400)
    where = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
    place = f" at {Path(where[0].filename).name}:{where[0].lineno}" if where else ""
    return one_line(f"{type(error).__name__}{place}: {error}", limit=400)


def explain_case(case: Case, settings: BatchSettings, run_id: str) -> dict[str, Any]:
    """Explain one case, unless the ledger says it is finished for this content and these settings.

    Never raises for a problem with the case: a scan that cannot be read or
    explained gives a record with ``status="error"`` and the one-line reason.

    Args:
        case: the scan (and its label and mask).
        settings: the batch's settings.
        run_id: the run that computes the case (kept in the record).

    Returns:
        The case's record (as written in ``OUTDIR/.cases/``), with ``skipped=True`` when an
        earlier run had finished it.
    """
    outdir = Path(settings.outdir)
    worker, _ = _worker()
    started = time.perf_counter()
    record: dict[str, Any] = {
        **case.record_fields(),
        "settings_sha256": settings.digest,
        "run": run_id,
        "worker": worker,
        "pid": os.getpid(),
    }
    try:
        content = file_digest([Path(case.path)] + ([Path(case.mask)] if case.mask else []))
    except OSError as error:
        return _finish_error(outdir, record, error, started)
    record["content_sha256"] = content
    previous = read_record(outdir, case.id)
    if is_finished(previous, outdir, content, settings.digest):
        assert previous is not None
        return {**previous, "label": case.label, "skipped": True}  # a label is not part of the result
    try:
        record.update(_compute(case, settings, outdir, started))
    except Exception as error:  # one bad scan is an error row, never a failed batch
        return _finish_error(outdir, record, error, started)
    record.update(status="ok", error=None, finished_at=datetime.now(UTC).isoformat(timespec="seconds"))
    write_record(outdir, record)
    return {**record, "skipped": False}


def _finish_error(outdir: Path, record: dict[str, Any], error: BaseException, started: float) -> dict[str, Any]:
    record.update(
        status="error",
        error=_error_text(error),
        heatmap=None,
        thumbnail=None,
        timings={"total": time.perf_counter() - started},
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    write_record(outdir, record)
    return {**record, "skipped": False}


def _compute(case: Case, settings: BatchSettings, outdir: Path, started: float) -> dict[str, Any]:
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    volume = read_volume(Path(case.path), key=case.key)
    frame = ModelFrame(settings.orientation) if settings.orientation else None
    ending = ".nii.gz" if volume.affine is not None else ".npy"
    heatmap_path = outdir / HEATMAPS_FOLDER / f"{case.name}.heatmap{ending}"
    inputs = [Path(case.path), *(Path(p) for p in volume.metadata.get("paths", ()))]
    inputs += [Path(case.mask)] if case.mask else []
    check_output(heatmap_path, inputs=inputs, force=True, source=volume)
    mask = _read_mask(case, volume)
    timings["read"] = time.perf_counter() - clock

    clock = time.perf_counter()
    loaded, loaded_here = cached_model(settings)
    timings["load_model"] = time.perf_counter() - clock
    if settings.torch_threads is not None and torch.get_num_threads() != settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    view = world_view(volume.array, volume.affine if frame is None else None)
    clock = time.perf_counter()
    result = explain_volume(
        loaded,
        view.array,
        target_layer=settings.target_layer,
        class_idx=_class_value(settings.class_idx),
        method=settings.method,
        upsample=settings.upsample,
        device=worker_device(settings.device),
        nonfinite="replace" if settings.nonfinite == "replace" else "error",
        affine=volume.affine,
        frame=frame,
    )
    timings["explain"] = time.perf_counter() - clock
    timings.update({f"explain.{k}": float(v) for k, v in result.timings.items()})

    clock = time.perf_counter()
    in_file_order = view.to_file(result.heatmap)
    write_heatmap(
        heatmap_path,
        in_file_order,
        affine=volume.affine,
        provenance=heatmap_provenance(result, loaded, volume, generator="napari-vitcam batch"),
        force=True,
        source=volume,
    )
    thumb_path = outdir / THUMBNAILS_FOLDER / f"{case.name}.png"
    shown = world_view(volume.array, volume.affine)  # axial slices first, whatever the model's frame
    atomic_write(thumb_path, thumbnail(shown.array, np.transpose(in_file_order, shown.order)))
    timings["write"] = time.perf_counter() - clock

    metrics = None
    if mask is not None:
        clock = time.perf_counter()
        metrics = _metrics(mask, in_file_order, settings, result)
        timings["metrics"] = time.perf_counter() - clock
    timings["total"] = time.perf_counter() - started
    return {
        "heatmap": str(heatmap_path.relative_to(outdir)),
        "thumbnail": str(thumb_path.relative_to(outdir)),
        "format": volume.format,
        "shape": list(volume.array.shape),
        "predicted": result.predicted_name,
        "probability": float(result.probabilities[result.predicted_class]),
        "probabilities": dict(zip(result.class_names, (float(p) for p in result.probabilities), strict=False)),
        "explained_class": result.class_name,
        "method": result.method,
        "target_layer": result.target_layer,
        "upsample": result.upsample,
        "raw_max": result.raw_max,
        "device": result.device,
        "model_loaded_here": loaded_here,
        "metrics": metrics,
        "timings": timings,
    }
