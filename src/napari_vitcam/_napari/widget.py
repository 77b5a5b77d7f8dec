"""The dock widget: Qt controls wired to the workers and to the heatmap layer.

Only assembly and wiring live here. What is explained comes from
:mod:`.layer_input`, the work runs in :mod:`.worker` (never on the GUI
thread), the result is shown by :mod:`.heatmap_layer` and errors are worded
by :mod:`.notices`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

from napari.layers import Image, Layer
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QBrush, QColor
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_vitcam._napari import heatmap_layer, notices
from napari_vitcam._napari.evaluate_panel import EvaluatePanel
from napari_vitcam._napari.jobs import (
    ExplainDone,
    ExplainRequest,
    Failure,
    Job,
    ModelReady,
    SweepDone,
    explain_task,
    load_task,
    model_task,
    start_job,
)
from napari_vitcam._napari.layer_choice import LayerChoice
from napari_vitcam._napari.layer_geometry import layer_affine_ras
from napari_vitcam._napari.layer_input import full_resolution, select_volume
from napari_vitcam._napari.native_libraries import preload_triton
from napari_vitcam._napari.prediction_view import PredictionView
from napari_vitcam._napari.recent import RecentPaths
from napari_vitcam.core.errors import InputError, UntrustedCheckpointError, VitcamError
from napari_vitcam.core.vocabulary import STAGES, UPSAMPLE_MODES
from napari_vitcam.engine.explainers import EXPLAINERS, LayerExplainer
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.models.weights import SUFFIXES as WEIGHT_SUFFIXES
from napari_vitcam.pipeline.devices import available_devices
from napari_vitcam.pipeline.sweep import SweepAxis

PREDICTED = "predicted"
SWEEP_BLOCKS = "every block (sweep)"
SWEEP_CLASSES = "every class (sweep)"
RUN_STAGES = STAGES[1:]


def confirm_trust(parent: QWidget, path: Path) -> bool:
    """Ask whether to unpickle a file, which can run code."""
    answer = QMessageBox.warning(
        parent,
        "Load a pickled checkpoint?",
        f"{path.name} is a pickled file: loading it can run arbitrary code.\n\n"
        "Load it only if it comes from a source you trust.",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


def _combo(items: list[tuple[str, object]]) -> QComboBox:
    combo = QComboBox()
    for label, data in items:
        combo.addItem(label, data)
    return combo


class VitcamWidget(QWidget):
    """Grad-CAM (3D ViT): choose a volume and a checkpoint, run, get a heatmap layer."""

    model_ready = Signal(object)  # ModelReady
    load_finished = Signal(object)  # ModelReady, or None when loading failed or was cancelled
    run_finished = Signal(object)  # the heatmap layer, or None when the run failed or was cancelled

    def __init__(self, napari_viewer, parent: QWidget | None = None, *, recent: RecentPaths | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.recent = recent if recent is not None else RecentPaths.default()
        self.ready: ModelReady | None = None
        self.last_run: ExplainDone | None = None
        self.heatmaps = heatmap_layer.HeatmapLayers()
        self._watched_source: Layer | None = None
        self._source_changed = False
        self._job: Job | None = None
        self._kind = ""
        self._outcome: object = None
        self._after_job: Callable[[], object] | None = None
        self._sweep_layer: Layer | None = None
        preload_triton()  # the viewer's OpenGL may have loaded Mesa's LLVM already
        self._build()
        self._update_buttons()

    # ----------------------------------------------------------------- assembly
    def _build(self) -> None:
        self.layer_combo = LayerChoice(self.viewer)
        self.checkpoint_combo = QComboBox()
        self.checkpoint_combo.setEditable(True)
        self.checkpoint_combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.checkpoint_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.checkpoint_combo.setMinimumContentsLength(16)
        line = self.checkpoint_combo.lineEdit()
        if line is not None:  # an editable combo box has one
            line.setPlaceholderText("checkpoint file or bundle folder")
        self._fill_recent(self.recent.load())
        self.browse_button = QToolButton()
        self.browse_button.setText("…")
        self.browse_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self.browse_button)
        menu.addAction("Checkpoint file…", self._browse_file)
        menu.addAction("Bundle folder…", self._browse_folder)
        self.browse_button.setMenu(menu)
        self.load_button = QPushButton("Load")
        self.model_label = QLabel("No checkpoint loaded.")
        self.model_label.setWordWrap(True)
        self.target_combo = QComboBox()
        self.class_combo = _combo([(PREDICTED, None)])
        self.method_combo = _combo([(explainer.label, name) for name, explainer in EXPLAINERS.items()])
        self.device_combo = _combo([(name, name) for name in available_devices()])
        self.upsample_combo = _combo([(name, name) for name in UPSAMPLE_MODES])
        self.keep_check = QCheckBox("keep previous heatmaps")
        self.replace_check = QCheckBox("replace NaN/Inf voxels (nonfinite=replace)")
        self.replace_check.setToolTip(
            "NaN by 0, ±Inf by the volume's largest or smallest finite value. "
            "Unchecked, a volume with NaN or Inf voxels is refused, saying how many and where."
        )
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        self.prediction = PredictionView()
        self.check_label = QLabel("")
        self.check_label.setWordWrap(True)
        self.check_label.setToolTip(
            "After each run the map's top tenth of cells is removed (blurred, then mean-filled) and the class "
            "probability's drop is compared with random cells: a map the model does not follow is flagged."
        )
        self.check_box = QCheckBox("check the map against the model")
        self.check_box.setChecked(True)
        self.sweep_label = QLabel("")
        self.sweep_label.setWordWrap(True)

        checkpoint_row = QHBoxLayout()
        checkpoint_row.addWidget(self.checkpoint_combo, 1)
        checkpoint_row.addWidget(self.browse_button)
        checkpoint_row.addWidget(self.load_button)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        form = QFormLayout()
        form.addRow("Image layer", self.layer_combo)
        form.addRow("Checkpoint", checkpoint_row)
        form.addRow("", self.model_label)
        form.addRow("Target block", self.target_combo)
        form.addRow("Target class", self.class_combo)
        form.addRow("Method", self.method_combo)
        form.addRow("Device", self.device_combo)
        form.addRow("Upsampling", self.upsample_combo)
        form.addRow("", self.keep_check)
        form.addRow("", self.replace_check)
        form.addRow("", self.check_box)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.prediction)
        layout.addWidget(self.check_label)
        layout.addWidget(self.sweep_label)
        self.evaluate = EvaluatePanel(self.viewer)  # the Evaluate section, collapsed until opened
        layout.addWidget(self.evaluate)
        layout.addStretch(1)

        self.load_button.clicked.connect(self.load_current)
        self.checkpoint_combo.activated.connect(self.load_current)
        self.run_button.clicked.connect(self._run_clicked)
        self.cancel_button.clicked.connect(self.cancel)
        self.layer_combo.changed.connect(self._update_buttons)
        self.method_combo.currentIndexChanged.connect(self._update_buttons)
        self.viewer.dims.events.current_step.connect(self._show_sweep_slice)

    def _fill_recent(self, paths: list[str]) -> None:
        text = self.checkpoint_combo.currentText()
        self.checkpoint_combo.clear()
        self.checkpoint_combo.addItems(paths)
        self.checkpoint_combo.setEditText(text)

    # ------------------------------------------------------------- layer list
    def layer_names(self) -> list[str]:
        return self.layer_combo.names()

    def selected_layer(self) -> Image | None:
        return self.layer_combo.layer()

    def select_layer(self, layer: Image | str) -> None:
        self.layer_combo.choose(layer)

    # ---------------------------------------------------------------- loading
    def _browse_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Open a checkpoint",
            self._start_folder(),
            f"Checkpoints ({' '.join('*' + suffix for suffix in WEIGHT_SUFFIXES)});;All files (*)",
        )
        if path:
            self.load(path)

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a MONAI bundle folder", self._start_folder())
        if path:
            self.load(path)

    def _start_folder(self) -> str:
        text = self.checkpoint_combo.currentText().strip()
        return str(Path(text).expanduser().parent) if text else os.getcwd()

    def load_current(self, *_args) -> bool:
        text = self.checkpoint_combo.currentText().strip()
        if not text:
            notices.notify("Grad-CAM: no checkpoint given: choose a file or bundle folder with the … button")
            return False
        return self.load(text)

    def load(self, path: str | os.PathLike, *, trust: bool = False) -> bool:
        """Load a checkpoint in a worker; returns False if another job is running."""
        if self._job is not None:  # the combo box keeps naming the model in use
            return False
        path = Path(path).expanduser()
        self.checkpoint_combo.setEditText(str(path))
        return self._start("load", load_task(path, trust=trust), partial(self._on_loaded, path=path))

    def use_model(self, loaded: LoadedModel) -> bool:
        """Explain with a model built in memory (its targets are probed in a worker)."""
        return self._start("load", model_task(loaded), partial(self._on_loaded, path=None))

    def _on_loaded(self, result: object, *, path: Path | None) -> None:
        if isinstance(result, Failure):
            self._load_failed(result, path)
            return
        assert isinstance(result, ModelReady)
        self.ready = result
        self._outcome = result
        if path is not None:
            self._fill_recent(self.recent.add(path))
        self._show_model(result)
        for note in result.loaded.warnings:  # what loading tolerated, such as ignored keys
            notices.notify(f"Grad-CAM: {note}", severity="warning")
        self.model_ready.emit(result)

    def _load_failed(self, failure: Failure, path: Path | None) -> None:
        if failure.cancelled:
            return
        if not failure.expected:
            notices.report_bug(failure.error)
            return
        if isinstance(failure.error, UntrustedCheckpointError) and path is not None:
            if confirm_trust(self, path):
                self._after_job = lambda: self.load(path, trust=True)
            else:
                notices.notify(f"Grad-CAM: {path.name} not loaded: {failure.error}", severity="info")
            return
        assert isinstance(failure.error, VitcamError)  # expected failures are ours
        notices.notify_load_error(failure.error, path or "the model")

    def _show_model(self, ready: ModelReady) -> None:
        spec = ready.loaded.spec
        source = ready.loaded.source.name if ready.loaded.source is not None else "model in memory"
        shape = "×".join(str(s) for s in (spec.input.channels, *spec.input.spatial_size))
        self.model_label.setText(f"{source}: {len(spec.class_names)} classes, input {shape}")
        self.target_combo.clear()
        for candidate in ready.targets:
            self.target_combo.addItem(candidate.label, candidate.name)
            if candidate.zero_gradient:
                index = self.target_combo.count() - 1
                self.target_combo.setItemData(index, QBrush(QColor("gray")), Qt.ItemDataRole.ForegroundRole)
                self.target_combo.setItemData(
                    index, "the class score has no gradient here: the map would be empty", Qt.ItemDataRole.ToolTipRole
                )
        names = [c.name for c in ready.targets]
        preferred = next((c.name for c in ready.targets if c.recommended), spec.target_layer)
        if preferred in names:
            self.target_combo.setCurrentIndex(names.index(preferred))
        elif spec.target_layer:
            self.target_combo.addItem(spec.target_layer, spec.target_layer)
            self.target_combo.setCurrentIndex(self.target_combo.count() - 1)
        if sum(not c.zero_gradient for c in ready.targets) > 1:
            self.target_combo.addItem(SWEEP_BLOCKS, SWEEP_BLOCKS)
        self._show_method(ready)
        self.class_combo.clear()
        self.class_combo.addItem(PREDICTED, None)
        for index, name in enumerate(spec.class_names):
            self.class_combo.addItem(name, index)
        if len(spec.class_names) > 1:
            self.class_combo.addItem(SWEEP_CLASSES, SWEEP_CLASSES)

    def _show_method(self, ready: ModelReady) -> None:
        """Mark and choose the default explainer measured for this kind of model (docs/evaluation.md)."""
        for index in range(self.method_combo.count()):
            name = self.method_combo.itemData(index)
            label = EXPLAINERS[name].label
            recommended = ready.method is not None and name == ready.method.method
            self.method_combo.setItemText(index, label + (" (recommended)" if recommended else ""))
            self.method_combo.setItemData(
                index, ready.method.reason if recommended and ready.method else None, Qt.ItemDataRole.ToolTipRole
            )
        if ready.method is not None:
            self.method_combo.setCurrentIndex(self.method_combo.findData(ready.method.method))
            if ready.method.target_layer and self.target_combo.findData(ready.method.target_layer) >= 0:
                self.target_combo.setCurrentIndex(self.target_combo.findData(ready.method.target_layer))

    # ---------------------------------------------------------------- running
    def _run_clicked(self) -> None:
        self.run()

    def run(self, layer: Layer | None = None) -> bool:
        """Explain ``layer`` (default: the chosen one) in a worker; returns False if nothing was started."""
        if self._job is not None:
            return False
        if self.ready is None:
            notices.notify("Grad-CAM: no checkpoint loaded: load one with the … button first")
            return False
        source = layer if layer is not None else self.selected_layer()
        if source is None:
            notices.notify("Grad-CAM: no 3D image layer: open a volume, or the demo from File > Open Sample")
            return False
        try:
            request = self._request(source)
        except VitcamError as error:
            notices.notify_run_error(error)
            return False
        started = self._start("run", explain_task(request), self._on_explained)
        if started:
            self._watch_source(source)
        return started

    def _watch_source(self, source: Layer | None) -> None:
        """Note any change of the source's data during the run: its result is then refused."""
        if self._watched_source is not None:
            self._watched_source.events.data.disconnect(self._on_source_data)
        self._watched_source = source
        self._source_changed = False
        if source is not None:
            source.events.data.connect(self._on_source_data)

    def _on_source_data(self, _event=None) -> None:
        self._source_changed = True

    def _source_unchanged(self, request: ExplainRequest) -> bool:
        source = request.source
        data = full_resolution(source)
        return (
            not self._source_changed
            and data is request.data
            and tuple(int(s) for s in getattr(data, "shape", ())) == tuple(request.selection.data_shape)
        )

    def _request(self, source: Layer) -> ExplainRequest:
        assert self.ready is not None  # run() checks
        loaded = self.ready.loaded
        selection = select_volume(source, loaded.spec.input.channels, self.viewer.dims.point)
        method = self.method_combo.currentData()
        target = self.target_combo.currentData()
        class_choice = self.class_combo.currentData()
        sweep: SweepAxis | None = None
        if target == SWEEP_BLOCKS:
            sweep, target = "blocks", loaded.spec.target_layer or ""
            if not isinstance(EXPLAINERS[method], LayerExplainer):
                raise InputError(
                    f"{EXPLAINERS[method].label} reads no single layer, so it has no block to sweep: "
                    "choose a layer method such as Grad-CAM, or one block"
                )
        if class_choice == SWEEP_CLASSES:
            if sweep is not None:
                raise InputError("sweep over every block or over every class, not both: choose one block or one class")
            sweep, class_choice = "classes", None
        if not target and isinstance(EXPLAINERS[method], LayerExplainer):
            raise InputError("no target block: load a checkpoint whose model has transformer blocks")
        if sweep is not None and (selection.fixed or selection.channel_axis is not None):
            raise InputError(
                f"a sweep is shown as one 4D layer over a 3D image, and {source.name!r} has "
                f"{len(selection.data_shape)} axes: choose a 3D image layer, or explain one block and class at a time"
            )
        return ExplainRequest(
            loaded=loaded,
            source=source,
            data=full_resolution(source),
            selection=selection,
            target_layer=target,
            class_idx=class_choice,
            sweep=sweep,
            check=self.check_box.isChecked(),
            class_label=self.class_combo.currentText(),
            method=method,
            upsample=self.upsample_combo.currentData(),
            device=self.device_combo.currentData(),
            keep_previous=self.keep_check.isChecked(),
            nonfinite="replace" if self.replace_check.isChecked() else "error",
            affine=layer_affine_ras(source),
        )

    def _rerun_on_cpu(self) -> None:
        self.run_on_cpu()

    def run_on_cpu(self) -> bool:
        self.device_combo.setCurrentIndex(self.device_combo.findData("cpu"))
        return self.run()

    def _on_explained(self, result: object) -> None:
        if isinstance(result, Failure):
            if not result.expected:
                notices.report_bug(result.error)
            elif not result.cancelled:
                assert isinstance(result.error, VitcamError)  # expected failures are ours
                notices.notify_run_error(result.error, rerun_on_cpu=self._rerun_on_cpu)
            return
        assert isinstance(result, (ExplainDone, SweepDone))
        request = result.request
        if request.source not in self.viewer.layers:
            notices.notify(
                f"Grad-CAM: layer {request.source.name!r} was removed during the run: no heatmap shown", severity="info"
            )
            return
        if not self._source_unchanged(request):
            notices.notify(
                f"Grad-CAM: the data of layer {request.source.name!r} changed during the run: "
                "no heatmap shown; run again on the new data",
                severity="info",
            )
            return
        if isinstance(result, SweepDone):
            self._show_sweep(result)
            return
        explanation = result.explanation
        timings = {"load": self.ready.seconds if self.ready else 0.0, **result.timings}
        metadata = heatmap_layer.heatmap_metadata(
            explanation,
            request.loaded,
            request.source,
            request.selection,
            requested_class=request.class_label,
            timings=timings,
        )
        if result.checks:
            metadata["model_check"] = [check.as_dict() for check in result.checks]
            metadata["model_check_passed"] = result.trusted
        self._outcome = self.heatmaps.show(
            self.viewer.layers,
            request.source,
            request.selection,
            result.heatmap,
            heatmap_layer.heatmap_name(explanation),
            metadata,
            keep_previous=request.keep_previous,
        )
        self.last_run = result
        self.evaluate.set_run(result, self._outcome if isinstance(self._outcome, Layer) else None)
        self.prediction.show_explanation(explanation, request.source.name)
        self._show_checks(result)
        if "frame_note" in explanation.preprocessing:
            notices.notify(f"Grad-CAM: {explanation.preprocessing['frame_note']}", severity="warning")

    def _show_checks(self, result: ExplainDone) -> None:
        """One line: do the map's top cells matter to the model more than random cells? A warning when not."""
        if not result.checks:
            self.check_label.setText("")
            return
        best = max(result.checks, key=lambda check: check.margin)
        if result.trusted:
            self.check_label.setStyleSheet("")
            self.check_label.setText(f"Model check: {best.line}.")
            return
        self.check_label.setStyleSheet("color: orange")
        self.check_label.setText(
            f"Model check: removing the map's top {best.cells} cells lowers p by {best.drop:.2f}, random cells by "
            f"{best.random_drop:.2f} (blurred or mean-filled): the map does no better than random cells; "
            "do not trust it (try another method or block)."
        )

    def _show_sweep(self, result: SweepDone) -> None:
        """A new 4D layer over the source, its slider on the slice of the predicted class or recommended block."""
        request, sweep = result.request, result.sweep
        metadata = heatmap_layer.sweep_metadata(sweep, request.loaded, request.source, request.selection)
        layer = heatmap_layer.sweep_layer(request.source, request.selection, sweep, metadata)
        self.viewer.layers.append(layer)
        wanted = self.ready.loaded.spec.target_layer if self.ready and sweep.over == "blocks" else sweep.predicted_name
        first = sweep.labels.index(wanted) if wanted in sweep.labels else 0
        self.viewer.dims.set_point(self.viewer.dims.ndim - 4, first)
        self._sweep_layer = layer
        self._outcome = layer
        self.prediction.show_sweep(sweep, request.source.name)
        self.check_label.setText("")
        self._show_sweep_slice()

    def _show_sweep_slice(self, _event=None) -> None:
        """Say which block or class the sweep layer's slider shows."""
        layer = getattr(self, "_sweep_layer", None)
        if layer is None or layer not in self.viewer.layers:
            self.sweep_label.setText("")
            return
        labels = layer.metadata["sweep"]["labels"]
        axis = self.viewer.dims.ndim - layer.ndim
        index = int(min(max(round(float(self.viewer.dims.point[axis])), 0), len(labels) - 1))
        what = heatmap_layer.SWEEP_AXIS_LABELS[layer.metadata["sweep"]["over"]]
        self.sweep_label.setText(
            f"{layer.name}: {what} {labels[index]} ({index + 1} of {len(labels)}; move the {what} slider for the others)"
        )

    def cancel(self, *_args) -> None:
        """Stop the running job: a run stops at the model's next module call."""
        if self._job is not None:
            self._job.cancel()
            self.progress.setFormat("cancelling…")
            self.cancel_button.setEnabled(False)

    @property
    def busy(self) -> bool:
        return self._job is not None

    # -------------------------------------------------------------- job state
    def _start(self, kind: str, task, on_result) -> bool:
        if self._job is not None:
            return False
        self._kind = kind
        self._outcome = None
        self._after_job = None
        self._handle_result = on_result
        stages = RUN_STAGES if kind == "run" else ("load",)
        self.progress.setRange(0, len(stages))
        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        self._job = start_job(task, on_stage=self._on_stage, on_result=self._on_result, on_finished=self._on_finished)
        self.destroyed.connect(self._job.worker.cancel_event.set)  # closing napari stops the run
        self._update_buttons()
        return True

    def _on_result(self, result: object) -> None:
        self._handle_result(result)

    def _on_stage(self, stage: str) -> None:
        stages = RUN_STAGES if self._kind == "run" else ("load",)
        if self._job is None or self._job.cancelled or stage not in stages:
            return
        self.progress.setValue(stages.index(stage))
        self.progress.setFormat(f"{stage} ({stages.index(stage) + 1}/{len(stages)})")

    def _on_finished(self) -> None:
        job = self._job
        kind, cancelled = self._kind, job is not None and job.cancelled
        self._job = None
        self._watch_source(None)
        self.progress.setValue(0 if cancelled else self.progress.maximum())
        self.progress.setFormat("cancelled" if cancelled else "done" if self._outcome is not None else "idle")
        self._update_buttons()
        outcome = None if cancelled else self._outcome
        (self.run_finished if kind == "run" else self.load_finished).emit(outcome)
        follow_up, self._after_job = self._after_job, None
        if follow_up is not None:
            follow_up()

    def _update_buttons(self, *_args) -> None:
        idle = self._job is None
        self.run_button.setEnabled(idle and self.ready is not None and self.selected_layer() is not None)
        method = self.method_combo.currentData()
        self.target_combo.setEnabled(isinstance(EXPLAINERS.get(method), LayerExplainer))
        self.cancel_button.setEnabled(not idle)
        self.load_button.setEnabled(idle)
        self.browse_button.setEnabled(idle)
        self.checkpoint_combo.setEnabled(idle)
