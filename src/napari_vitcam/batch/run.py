"""Running a batch on Dask: :func:`run_batch` (the command line's engine) and :func:`explain_many` (Python).

The client checks everything it can before any scan is read (the options,
the output folder, the inputs, the checkpoint, which it loads once to resolve
the target layer and the class), then sends each worker a case and the
settings (paths and strings, never arrays). Each case is done by
:func:`napari_vitcam.batch.worker.explain_case`, which writes its heatmap,
thumbnail and ledger record atomically. When every case is back the client
writes the results table and the report from the records, atomically too.

The cluster: a :class:`distributed.LocalCluster` by default (one worker per
GPU when the device is a GPU, else worker processes sharing the CPU cores,
each with a fair share of torch threads), an existing cluster with
``scheduler="tcp://host:8786"``, or a :class:`distributed.Client` you pass.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from napari_vitcam.batch.cases import BatchSettings, Case, find_cases
from napari_vitcam.batch.ledger import atomic_write, hold_lock, prepare_outdir, remove_partials, write_record
from napari_vitcam.batch.report import render_report
from napari_vitcam.batch.worker import explain_case
from napari_vitcam.core.errors import DeviceError, InputError, MissingExtraError
from napari_vitcam.core.vocabulary import one_line
from napari_vitcam.engine.explainers.registry import EXPLAINERS
from napari_vitcam.pipeline.checks import check_nonfinite_choice, check_upsample, class_index
from napari_vitcam.pipeline.devices import pick_device
from napari_vitcam.pipeline.explain import AUTO
from napari_vitcam.pipeline.frame import ModelFrame

TABLE_FORMATS = ("parquet", "csv")
METRICS = ("pointing_strict", "pointing_tolerant", "peak_distance", "energy", "iou")
INSTALL = "pip install 'napari-vitcam[batch]'"

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class BatchRun:
    """What a batch run did.

    Args:
        rows: the results table, one dict per case in input order (the columns of ``docs/batch.md``).
        table: the table's file (``results.parquet`` or ``results.csv``).
        report: the HTML report.
        computed: cases explained in this run.
        skipped: cases an earlier run had finished (same content, same settings).
        failed: cases that ended with an error (retried by the next run).
        seconds: the run's wall time.
        workers: how many Dask workers took part.
    """

    rows: list[dict[str, Any]]
    table: Path
    report: Path
    computed: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    workers: int = 0
    removed_partials: list[Path] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Volumes explained per second in this run (skipped cases not counted)."""
        return self.computed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line: the counts, the time and the rate."""
        return (
            f"{len(self.rows)} cases: {self.computed} explained, {self.skipped} already done, "
            f"{self.failed} failed; {self.seconds:.1f} s on {self.workers} worker(s), "
            f"{self.rate:.2f} volumes/s"
        )


def _distributed():
    try:
        import distributed
    except ImportError:
        raise MissingExtraError(f"a batch runs on Dask, which is not installed: {INSTALL}") from None
    return distributed


def _check_format(table_format: str) -> str:
    table_format = str(table_format).lower()
    if table_format not in TABLE_FORMATS:
        raise InputError(f"unknown table format {table_format!r}: choose parquet or csv")
    if table_format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise MissingExtraError(f"a Parquet table needs pyarrow: {INSTALL}, or choose the csv format") from None
    return table_format


def default_workers(device: str) -> int:
    """One worker per GPU when the device may be a GPU and there are GPUs, else one per core, at most 4."""
    import torch

    if device != "cpu" and torch.cuda.is_available() and not device.startswith("cuda:"):
        return torch.cuda.device_count()
    return max(1, min(4, os.cpu_count() or 1))


def _device_problem(device: str) -> str | None:
    """Why ``device`` cannot be used here, or None (run on every worker of a cluster the batch did not start)."""
    try:
        pick_device(device)
    except DeviceError as error:
        return str(error)
    return None


def _check_device(device: str, local: bool) -> None:
    """Refuse a device name that is no device, and, on a local cluster, a device this machine lacks.

    A running scheduler's workers may have GPUs this machine lacks: they are asked
    themselves (:func:`_device_problem`) before any case is sent.
    """
    import torch

    name = str(device).strip().lower()
    if local or name == "auto":
        pick_device(name)
        return
    try:
        kind = torch.device(name).type
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda", "mps"):
        pick_device(name)  # the one-line message naming the unknown device
        raise DeviceError(f"unsupported device {name!r}: choose auto, cpu, cuda, cuda:1 or mps")


def _sees(paths: list[str]) -> list[str]:
    """Of ``paths``, those this process cannot see (run on every worker)."""
    return [p for p in paths if not os.path.exists(p)]


@contextmanager
def _client(
    client: Any, scheduler: str | None, workers: int | None, processes: bool | None, device: str
) -> Iterator[tuple[Any, int | None]]:
    """(a Dask client, torch threads per worker or None); a local cluster made here is closed on exit."""
    if client is not None:
        yield client, None
        return
    distributed = _distributed()
    if scheduler:
        try:
            remote = distributed.Client(scheduler, timeout="15s")
        except (OSError, TimeoutError) as error:
            raise InputError(
                f"cannot reach the Dask scheduler at {scheduler} ({one_line(error, 120)}): "
                "start it with 'dask scheduler' or check the address"
            ) from None
        try:
            yield remote, None
        finally:
            remote.close()
        return
    count = workers if workers is not None else default_workers(device)
    in_processes = True if processes is None else processes
    threads = max(1, (os.cpu_count() or 1) // count) if in_processes else None
    cluster = distributed.LocalCluster(
        n_workers=count,
        threads_per_worker=1,
        processes=in_processes,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    )
    local = distributed.Client(cluster)
    try:
        yield local, threads
    finally:
        local.close()
        cluster.close()


def _progress(enabled: bool, total: int) -> tuple[Callable[[int, int, int], None], Callable[[], None]]:
    """(update(done, failed, computed), close) of a rich progress bar on stderr, or no-ops."""
    if not enabled:
        return (lambda done, failed, computed: None), (lambda: None)
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:
        raise MissingExtraError(f"the progress bar needs rich: {INSTALL}, or turn progress off") from None
    bar = Progress(
        TextColumn("explaining"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
    task = bar.add_task("explaining", total=total, failed=0, rate="")
    bar.start()
    start = time.perf_counter()

    def update(done: int, failed: int, computed: int) -> None:
        elapsed = time.perf_counter() - start
        rate = f"{computed / elapsed:.2f} vol/s" if computed and elapsed > 0 else ""
        bar.update(task, completed=done, failed=failed, rate=rate)

    return update, bar.stop


def _flatten(record: dict[str, Any], class_names: Sequence[str], timing_names: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "case": record.get("case"),
        "name": record.get("name"),
        "path": record.get("path"),
        "key": record.get("key"),
        "label": record.get("label"),
        "mask": record.get("mask"),
        "status": record.get("status"),
        "error": record.get("error"),
        "heatmap": record.get("heatmap"),
        "thumbnail": record.get("thumbnail"),
        "predicted": record.get("predicted"),
        "probability": record.get("probability"),
    }
    probabilities = record.get("probabilities") or {}
    row.update({f"prob_{name}": probabilities.get(name) for name in class_names})
    label, predicted = record.get("label"), record.get("predicted")
    correct = None
    if label is not None and predicted is not None:
        names = list(class_names)
        by_index = label.lstrip("-").isdigit() and predicted in names and names.index(predicted) == int(label)
        correct = bool(label == predicted or by_index)
    row["correct"] = correct
    for name in ("explained_class", "method", "target_layer", "upsample", "raw_max", "device", "worker"):
        row[name] = record.get(name)
    metrics = record.get("metrics") or {}
    row.update({name: metrics.get(name) for name in METRICS})
    timings = record.get("timings") or {}
    row.update({f"time_{name.replace('.', '_')}_s": timings.get(name) for name in timing_names})
    for name in ("content_sha256", "settings_sha256", "run", "finished_at"):
        row[name] = record.get(name)
    row["skipped"] = bool(record.get("skipped", False))
    return row


def _table_rows(records: Sequence[dict[str, Any]], class_names: Sequence[str]) -> list[dict[str, Any]]:
    names = list(class_names)
    for record in records:
        names += [n for n in (record.get("probabilities") or {}) if n not in names]
    timing_names = ["total", "read", "load_model", "explain", "write", "metrics"]
    for record in records:
        timing_names += [n for n in (record.get("timings") or {}) if n not in timing_names]
    return [_flatten(record, names, timing_names) for record in records]


def _write_table(path: Path, rows: list[dict[str, Any]], table_format: str) -> Path:
    if table_format == "parquet":
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buffer)
        return atomic_write(path, buffer.getvalue())
    import csv
    import io

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["case"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return atomic_write(path, text.getvalue().encode())


def _lost_case(outdir: Path, case: Case, settings: BatchSettings, run_id: str, error: BaseException) -> dict[str, Any]:
    """The record of a case whose task failed outside :func:`explain_case` (a worker died, say)."""
    record = {
        **case.record_fields(),
        "status": "error",
        "error": one_line(f"the worker failed ({type(error).__name__}: {error}): rerun to retry", limit=400),
        "heatmap": None,
        "thumbnail": None,
        "settings_sha256": settings.digest,
        "run": run_id,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_record(outdir, record)
    return {**record, "skipped": False}


def _same_arguments(source: Callable[P, Any]) -> Callable[[Callable[..., R]], Callable[P, R]]:
    """A decorator: the function it decorates takes ``source``'s arguments (for type checkers and ``help``).

    The decorated function passes them on to ``source`` as they came; it keeps its own return type.
    """

    def same(target: Callable[..., R]) -> Callable[P, R]:
        returns = inspect.signature(target).return_annotation
        target.__signature__ = inspect.signature(source).replace(return_annotation=returns)  # type: ignore[attr-defined]
        return target

    return same


def run_batch(
    checkpoint: str | Path,
    inputs: str | Path | list[str | Path],
    outdir: str | Path,
    *,
    method: str = "gradcam",
    target_layer: str | None = None,
    class_idx: int | str | None = None,
    upsample: str = "smooth",
    orientation: str | None = None,
    nonfinite: str = "error",
    tolerance: float | None = None,
    device: str = "auto",
    trust: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    processes: bool | None = None,
    table_format: str = "parquet",
    progress: bool = False,
) -> BatchRun:
    """Explain every scan of ``inputs`` on Dask; resumable (see :func:`explain_many` for the arguments).

    Returns:
        A :class:`BatchRun`: the table's rows and files, and what was explained, skipped and failed.
    """
    started = time.perf_counter()
    table_format = _check_format(table_format)
    upsample = check_upsample(upsample)
    check_nonfinite_choice(nonfinite)
    if method != AUTO and method not in EXPLAINERS:
        raise InputError(f"unknown method {method!r}: choose auto or one of {', '.join(EXPLAINERS)}")
    if orientation:
        orientation = ModelFrame(orientation).orientation
    if tolerance is not None and not tolerance >= 0:
        raise InputError(f"tolerance {tolerance} is negative or not a number: give a distance in voxels (>= 0)")
    if workers is not None and workers < 1:
        raise InputError(f"--workers {workers}: give at least 1")
    if workers is not None and (scheduler or client is not None):
        raise InputError("--workers sizes a local cluster: with a running scheduler, start workers with 'dask worker'")
    if scheduler and client is not None:
        raise InputError("give a scheduler address or a client, not both")
    _check_device(device, local=not scheduler and client is None)
    cases = find_cases(inputs, outdir=Path(outdir))
    _distributed()
    checkpoint = Path(checkpoint).expanduser().resolve()

    from napari_vitcam.models.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint, trust=trust, device="cpu")
    # with auto and no --target, each worker's explain_volume takes the layer chosen with the method
    target = target_layer if method == AUTO else target_layer or loaded.spec.target_layer
    if (target is not None or method != AUTO) and (not target or target not in dict(loaded.model.named_modules())):
        raise InputError(
            f"the model has no layer {target!r}: list the candidates with the widget or pass another --target"
        )
    class_index(
        class_idx if not (isinstance(class_idx, str) and class_idx.isdigit()) else int(class_idx), loaded.class_names
    )
    class_names = tuple(loaded.class_names)
    digests = dict(loaded.sha256)
    del loaded
    out = prepare_outdir(Path(outdir))  # created only once everything above is right

    run_id = uuid.uuid4().hex[:12]
    with hold_lock(out):
        removed = remove_partials(out)
        with _client(client, scheduler, workers, processes, device) as (dask_client, threads):
            worker_count = len(dask_client.nthreads())
            if worker_count == 0:
                raise InputError("the Dask cluster has no workers: start some with 'dask worker SCHEDULER_ADDRESS'")
            if scheduler or client is not None:
                problems = dask_client.run(_device_problem, device)
                where, problem = next(((w, p) for w, p in sorted(problems.items()) if p), (None, None))
                if problem:
                    raise DeviceError(f"on the Dask worker {where}: {problem}")
            unseen = {p for missing in dask_client.run(_sees, [str(checkpoint), str(out)]).values() for p in missing}
            if unseen:
                raise InputError(
                    f"some Dask workers cannot see {sorted(unseen)[0]}: put the checkpoint and the output folder "
                    "on a file system every worker mounts at the same path"
                )
            settings = BatchSettings(
                checkpoint=str(checkpoint),
                checkpoint_sha256=digests,
                outdir=str(out),
                trust=trust,
                method=method,
                target_layer=target,
                class_idx=class_idx,
                upsample=upsample,
                orientation=orientation,
                nonfinite=nonfinite,
                tolerance=tolerance,
                device=device,
                torch_threads=threads,
            )
            records = _gather(dask_client, cases, settings, run_id, progress)
    rows = _table_rows([records[case.id] for case in cases], class_names)
    computed = sum(1 for r in rows if r["status"] == "ok" and not r["skipped"])
    run = BatchRun(
        rows=rows,
        table=out / f"results.{table_format}",
        report=out / "report.html",
        computed=computed,
        skipped=sum(1 for r in rows if r["skipped"]),
        failed=sum(1 for r in rows if r["status"] != "ok"),
        workers=worker_count,
        removed_partials=removed,
    )
    run.seconds = time.perf_counter() - started
    _write_table(run.table, rows, table_format)
    title = f"napari-vitcam batch: {checkpoint.name}, {_how(rows, method, target)}"
    atomic_write(run.report, render_report(run.report, rows, out, title=title, summary=run.summary()).encode())
    return run


def _how(rows: Sequence[dict[str, Any]], method: str, target: str | None) -> str:
    """The report's "METHOD at LAYER": with auto, the method(s) and layer(s) the finished cases used."""
    if method != AUTO:
        return f"{method} at {target}"
    used = sorted({(str(r["method"]), r["target_layer"]) for r in rows if r["status"] == "ok"}, key=str)
    if not used:
        return "auto"
    return "auto: " + ", ".join(m if layer is None else f"{m} at {layer}" for m, layer in used)


def _gather(client: Any, cases: list[Case], settings: BatchSettings, run_id: str, progress: bool) -> dict[str, dict]:
    """Send every case, collect every record (in completion order), with the progress bar."""
    distributed = _distributed()
    futures = {
        client.submit(explain_case, case, settings, run_id, key=f"vitcam-batch-{run_id}-{case.id}", pure=False): case
        for case in cases
    }
    update, close = _progress(progress, len(cases))
    records: dict[str, dict] = {}
    failed = computed = 0
    try:
        for future in distributed.as_completed(list(futures)):
            case = futures[future]
            try:
                record = future.result()
            except Exception as error:  # the task itself failed: a worker died, a result could not travel
                record = _lost_case(Path(settings.outdir), case, settings, run_id, error)
            records[case.id] = record
            failed += record.get("status") != "ok"
            computed += record.get("status") == "ok" and not record.get("skipped")
            update(len(records), failed, computed)
    except BaseException:
        client.cancel(list(futures))
        raise
    finally:
        close()
    return records


@_same_arguments(run_batch)
def explain_many(*args: Any, **kwargs: Any) -> Any:
    """Explain every scan of a cohort on Dask and return the results table (a pandas DataFrame).

    Each scan's heatmap is written to ``OUTDIR/heatmaps/`` (NIfTI with the
    scan's geometry when it has one, else ``.npy``), its thumbnail to
    ``OUTDIR/thumbnails/``, its record to ``OUTDIR/.cases/``; then the table
    (``OUTDIR/results.parquet`` or ``.csv``) and ``OUTDIR/report.html``.
    Everything is written atomically. Rerunning with the same inputs skips the
    cases already finished with the same content and settings and retries the
    failed ones. A scan that cannot be explained is an error row.

    Args:
        checkpoint: the checkpoint (file or MONAI bundle folder), readable by every worker.
        inputs: a folder, a glob pattern, a CSV with a ``path`` column (and optionally ``label``,
            ``mask``, ``key``), or a list of paths.
        outdir: the output folder (created; shared by every worker).
        method: the explainer (``gradcam``...), or ``auto``: the one chosen for this kind of model
            (:func:`~napari_vitcam.models.targets.method_for`, as ``napari-vitcam explain --method auto``);
            the table's ``method`` and ``target_layer`` columns say what each case used.
        target_layer: the layer to explain (default: the checkpoint's recommendation; with ``auto``,
            the layer chosen with the method).
        class_idx: the class to explain, a name or an index (default: each scan's predicted class).
        upsample: how token maps become voxel maps (``smooth`` or ``patch``...).
        orientation: the model's frame (``RAS``...): scans with geometry are reoriented to it.
        nonfinite: ``error`` (a scan with NaN/Inf voxels is an error row) or ``replace``.
        tolerance: the pointing game's tolerance in voxels (default: half a token).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...: checked before any case runs (on a
            running scheduler's workers, by the workers themselves).
        trust: allow full unpickling of the checkpoint (only for files you trust).
        workers: local cluster size (default: one per GPU, else one per core, at most 4).
        scheduler: the address of a running Dask scheduler (``tcp://host:8786``) instead of a local cluster.
        client: a :class:`distributed.Client` to use instead.
        processes: a local cluster's workers as processes (default) or as threads of this process.
        table_format: ``parquet`` (default) or ``csv``.
        progress: show a progress bar on stderr.

    Returns:
        A pandas DataFrame, one row per scan in input order (columns in ``docs/batch.md``); the
        run's counts are in ``frame.attrs["summary"]``.
    """
    import pandas as pd

    run = run_batch(*args, **kwargs)
    frame = pd.DataFrame(run.rows)
    frame.attrs["summary"] = run.summary()
    frame.attrs["table"] = str(run.table)
    frame.attrs["report"] = str(run.report)
    return frame
