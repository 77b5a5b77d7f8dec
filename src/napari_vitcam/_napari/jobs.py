"""Loading and explaining off the GUI thread, reporting stages, cancellable.

Each job is a napari function worker running a *task*: a plain function
``task(progress, cancel)`` that reports stage names through ``progress`` and
stops with :class:`~napari_vitcam.core.errors.Cancelled` once ``cancel`` is set.
Errors come back as a :class:`Failure` result: expected ones
(:class:`~napari_vitcam.core.errors.VitcamError`) for the GUI to word, anything
else marked unexpected, for napari's error notification with its traceback.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from napari.layers import Layer
from napari.qt.threading import FunctionWorker
from qtpy.QtCore import QObject, Signal

from napari_vitcam._napari.layer_input import VolumeSelection
from napari_vitcam._napari.native_libraries import preload_triton
from napari_vitcam.core.errors import Cancelled, VitcamError
from napari_vitcam.engine.capture import model_lock
from napari_vitcam.engine.recommend import MethodChoice
from napari_vitcam.engine.targets import TargetCandidate
from napari_vitcam.evaluation.faithfulness import Agreement, agreement
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.models.targets import method_for, targets_for
from napari_vitcam.pipeline.checks import NonFinite
from napari_vitcam.pipeline.explain import VolumeExplanation, explain_volume, model_input
from napari_vitcam.pipeline.sweep import SweepAxis, VolumeSweep, sweep_volume

Progress = Callable[[str], None]
Task = Callable[[Progress, threading.Event], object]
R = TypeVar("R")


@dataclass(frozen=True)
class Failure:
    """A job that ended with an error, or was cancelled. ``expected``: a :class:`VitcamError`."""

    error: Exception
    expected: bool = True

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, Cancelled)


@dataclass(frozen=True)
class ModelReady:
    """A model and its target candidates, ready to explain with."""

    loaded: LoadedModel
    targets: list[TargetCandidate]
    seconds: float
    method: MethodChoice | None = None


@dataclass(frozen=True)
class ExplainRequest:
    """Everything one run needs, captured on the GUI thread when Run is pressed.

    ``source`` is the layer the data came from; the worker never touches it.
    ``data`` is the source's (full-resolution) data as it was at Run: a result
    is shown only if the source still holds that same array. ``class_label``
    (as the user chose it) and ``keep_previous`` are for showing the result;
    ``nonfinite`` says whether NaN/Inf voxels are refused or replaced;
    ``affine``: the source's voxel-to-RAS affine (None: unknown), for a model
    that declares its orientation or spacing. ``sweep``: ``"blocks"`` or
    ``"classes"`` for a sweep (one stack of maps), None for one map.
    ``check``: after one map, measure how much the map's top cells matter to
    the model against random cells (:data:`CHECK_BASELINES`).
    """

    loaded: LoadedModel
    source: Layer
    data: object
    selection: VolumeSelection
    target_layer: str
    class_idx: int | str | None
    method: str
    upsample: str
    device: str
    class_label: str = "predicted"
    keep_previous: bool = False
    nonfinite: NonFinite = "error"
    affine: np.ndarray | None = None
    sweep: SweepAxis | None = None
    check: bool = True


@dataclass(frozen=True)
class ExplainDone:
    """A finished run: the explanation, its heatmap at the selection's spatial shape, and the model check.

    ``checks``: one :class:`~napari_vitcam.evaluation.faithfulness.Agreement`
    per baseline of :data:`CHECK_BASELINES` (empty when the check was off).
    """

    request: ExplainRequest
    explanation: VolumeExplanation
    heatmap: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    checks: tuple[Agreement, ...] = ()

    @property
    def trusted(self) -> bool | None:
        """Whether the map's top cells matter more than random ones under some baseline (None: not checked)."""
        return any(check.better_than_random for check in self.checks) if self.checks else None


@dataclass(frozen=True)
class SweepDone:
    """A finished sweep: every block or every class of one volume."""

    request: ExplainRequest
    sweep: VolumeSweep
    timings: dict[str, float] = field(default_factory=dict)


CHECK_BASELINES = ("blur", "mean")
"""The baselines the check after each run removes the map's top cells with (a blurred copy, the volume's mean).

Either can look like evidence to a model (a blurred lesion may still read as one, a mean-filled patch as a
new one), so the map counts as agreeing with the model when it beats random cells under at least one."""


#: What a model raises when the input does not fit it (wrong channels, size or dtype).
def _checkpoint_loader():
    from napari_vitcam.models.checkpoint import load_checkpoint

    return load_checkpoint


def load_task(path: str | os.PathLike, *, trust: bool = False) -> Task:
    """Read a checkpoint (on the CPU) and probe its target candidates."""

    def task(progress: Progress, cancel: threading.Event) -> ModelReady:
        progress("load")
        start = time.perf_counter()
        preload_triton()  # before MONAI can import it: see native_libraries
        loaded = _checkpoint_loader()(path, trust=trust)
        if cancel.is_set():
            raise Cancelled("cancelled")
        targets = _probed(loaded)
        return ModelReady(loaded, targets, time.perf_counter() - start, _method(loaded))

    return task


def model_task(loaded: LoadedModel) -> Task:
    """Probe the target candidates of a model built in memory."""

    def task(progress: Progress, cancel: threading.Event) -> ModelReady:
        progress("load")
        start = time.perf_counter()
        preload_triton()
        targets = _probed(loaded)
        return ModelReady(loaded, targets, time.perf_counter() - start, _method(loaded))

    return task


def _probe_targets(loaded: LoadedModel) -> list[TargetCandidate]:
    """The candidates loading already probed, else a probe now (the model runs once per load, not twice)."""
    if loaded.targets is not None:
        return list(loaded.targets)
    return targets_for(loaded)


def _method(loaded: LoadedModel) -> MethodChoice | None:
    """The model's default explainer, or None where choosing it fails (the user then picks one)."""
    try:
        return method_for(loaded)
    except VitcamError:
        return None


def _probed(loaded: LoadedModel) -> list[TargetCandidate]:
    """The target candidates, probed while no run uses the same model (probing hooks it too)."""
    with model_lock(loaded.model):
        return _probe_targets(loaded)


def _read_and_run(
    request: ExplainRequest, run: Callable[..., R], progress: Progress, cancel: threading.Event, **extra: object
) -> tuple[np.ndarray, R, float]:
    """Read the selected voxels and run ``run`` (explain or sweep) on them with the request's settings.

    Args:
        request: what to read and how to explain it.
        run: :func:`explain_volume` or :func:`sweep_volume`.
        progress: called with each stage's name.
        cancel: set by the user to stop the run.
        extra: what ``run`` needs besides the request's settings (a sweep's axis).

    Returns:
        The voxels read, what ``run`` returned and the seconds the reading took.

    Raises:
        Cancelled: when ``cancel`` was set during the run.
    """
    progress("preprocess")
    start = time.perf_counter()
    volume = request.selection.read(request.data)
    read_seconds = time.perf_counter() - start
    result = run(
        request.loaded,
        volume,
        method=request.method,
        class_idx=request.class_idx,
        target_layer=request.target_layer,
        upsample=request.upsample,
        device=request.device,
        affine=request.affine,
        nonfinite=request.nonfinite,
        progress=progress,
        cancel=cancel,
        **extra,
    )
    if cancel.is_set():
        raise Cancelled("cancelled")
    return volume, result, read_seconds


def explain_task(request: ExplainRequest) -> Task:
    """Read the selected voxels and explain them; the GUI thread places the heatmap."""

    def task(progress: Progress, cancel: threading.Event) -> ExplainDone:
        volume, explanation, read_seconds = _read_and_run(request, explain_volume, progress, cancel)
        timings = {"read": read_seconds, **explanation.timings}
        checks: tuple[Agreement, ...] = ()
        if request.check and explanation.grid is not None:
            progress("check")
            start = time.perf_counter()
            checks = _model_checks(request, volume, explanation, cancel)
            timings["check"] = time.perf_counter() - start
        return ExplainDone(request, explanation, explanation.heatmap, timings, checks)

    def sweep(progress: Progress, cancel: threading.Event) -> SweepDone:
        assert request.sweep is not None
        _, result, read_seconds = _read_and_run(request, sweep_volume, progress, cancel, over=request.sweep)
        return SweepDone(request, result, {"read": read_seconds, **result.timings})

    return task if request.sweep is None else sweep


def _model_checks(
    request: ExplainRequest, volume: np.ndarray, explanation: VolumeExplanation, cancel: threading.Event
) -> tuple[Agreement, ...]:
    """The agreement check of the map with the model, once per baseline, on the exact input the model saw.

    Cancel stops it between batches (and with it the run).
    """
    assert explanation.grid is not None
    model = request.loaded.model
    x = model_input(
        request.loaded, volume, device=explanation.device, affine=request.affine, nonfinite=request.nonfinite
    )
    return tuple(
        agreement(
            model,
            x,
            explanation.token_cam,
            explanation.grid,
            explanation.class_idx,
            baseline=baseline,
            cancel=cancel,
            probability=float(explanation.probabilities[explanation.class_idx]),
        )
        for baseline in CHECK_BASELINES
    )


class _StageRelay(QObject):
    """Carries stage names from the worker thread to the GUI thread."""

    stage = Signal(str)


class CancellableWorker(FunctionWorker):
    """A napari function worker whose ``quit`` also sets its task's cancel event."""

    def __init__(self, task: Task, relay: _StageRelay):
        self.cancel_event = threading.Event()
        self.relay = relay
        super().__init__(_guarded(task), relay.stage.emit, self.cancel_event)

    def quit(self) -> None:
        self.cancel_event.set()
        super().quit()


def _guarded(task: Task) -> Task:
    def run(progress: Progress, cancel: threading.Event) -> object:
        try:
            return task(progress, cancel)
        except VitcamError as error:
            return Failure(error)
        except Exception as error:  # a bug: reported with its traceback, and the GUI recovers
            return Failure(error, expected=False)

    return run


@dataclass
class Job:
    """A started worker. ``cancel`` asks it to stop; its result is then never delivered."""

    worker: CancellableWorker

    def cancel(self) -> None:
        self.worker.quit()

    @property
    def cancelled(self) -> bool:
        return self.worker.cancel_event.is_set()


def start_job(
    task: Task,
    *,
    on_stage: Callable[[str], None],
    on_result: Callable[[object], None],
    on_finished: Callable[[], None],
) -> Job:
    """Run ``task`` in napari's thread pool; the callbacks run on the GUI thread.

    ``on_result`` receives the task's return value or a :class:`Failure`, and is
    not called once the job was cancelled. ``on_finished`` always runs last.
    Pass bound methods of a QObject: their connections end when it is deleted.
    """
    relay = _StageRelay()
    relay.stage.connect(on_stage)
    worker = CancellableWorker(task, relay)
    worker.returned.connect(on_result)
    worker.finished.connect(on_finished)
    worker.start()
    return Job(worker)
