"""The dock's Evaluate section: the last run's heatmap against a mask, against the model, against chance.

* **Against a mask**: a Labels layer on any grid is brought onto the
  heatmap's voxel grid through world coordinates (nearest neighbour); pointing
  game (strict and within half a patch), energy pointing and best-threshold
  IoU, per label.
* **Against the model**: deletion and insertion curves (Petsiuk et al. 2018)
  beside a band over random orders and, when computed, the occlusion map's
  curves (an occlusion run of the same volume, class and model, or one made
  for the comparison), with a chosen baseline (blur, mean, noise, or a
  reference Image layer such as a healthy scan), and a comparison of
  baselines.
* **Against chance**: the cascading randomisation test (Adebayo et al. 2018)
  on a copy of the model.

The work runs in worker threads (:func:`~napari_vitcam._napari.jobs.start_job`);
the computations are :mod:`napari_vitcam.evaluation.explained`, shared with
``napari-vitcam evaluate``. The numbers go into the heatmap layer's metadata
(the layer of the last run, which the plugin made) and "Copy table" puts them
on the clipboard, tab-separated.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.layers import Image, Labels, Layer
from qtpy.QtCore import QSize, Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_vitcam._napari import notices
from napari_vitcam._napari.jobs import ExplainDone, Failure, Job, Progress, Task, start_job
from napari_vitcam._napari.layer_choice import LayerChoice
from napari_vitcam._napari.layer_input import VolumeSelection, full_resolution, select_volume
from napari_vitcam.core.errors import Cancelled, InputError, VitcamError
from napari_vitcam.evaluation.explained import (
    Faithfulness,
    against_chance,
    against_mask,
    against_model,
    auc_spread,
    compare_baseline_curves,
    explain_alike,
    patch_tolerance,
    table_rows,
)
from napari_vitcam.evaluation.faithfulness import BASELINES
from napari_vitcam.evaluation.localisation import MaskScores
from napari_vitcam.evaluation.randomization import RandomizationResult
from napari_vitcam.pipeline.explain import VolumeExplanation

TABLE_HEADER = ("check", "item", "metric", "value")
KINDS = ("mask", "model", "baselines", "chance")


# ------------------------------------------------------------- a mask on the heatmap's grid
@dataclass(frozen=True)
class GridMapping:
    """Where each voxel of the heatmap's grid lies in a labels layer's data: ``origin + i*steps[0] + j*steps[1] + k*steps[2]``.

    Args:
        origin: the labels data coordinates of heatmap voxel (0, 0, 0).
        steps: (3, labels.ndim) the change per heatmap voxel along each spatial axis.
        spacing: the heatmap's voxel size along each spatial axis, in world units.
    """

    origin: np.ndarray
    steps: np.ndarray
    spacing: tuple[float, float, float]


def grid_mapping(source: Layer, selection: VolumeSelection, labels: Layer, world_point: Sequence[float]) -> GridMapping:
    """The affine map from the heatmap's voxels (the source's selection) to ``labels``' data, through world coordinates.

    Args:
        source: the layer that was explained (the heatmap has its transforms).
        selection: the part of ``source`` explained (fixed leading axes, channel axis).
        labels: the Labels layer (any scale, translation, rotation, dimensionality).
        world_point: the viewer's current world point, for axes the source does not have.
    """
    fixed = dict(selection.fixed)
    ndim = len(selection.data_shape)
    base = np.array([float(fixed.get(axis, 0)) for axis in range(ndim)])

    def world(point: np.ndarray) -> np.ndarray:
        position = np.asarray(world_point, dtype=float).copy()
        here = np.asarray(source.data_to_world(point), dtype=float)
        if len(position) < len(here):
            position = here
        else:
            position[len(position) - len(here) :] = here
        return position

    def to_labels(point: np.ndarray) -> np.ndarray:
        return np.asarray(labels.world_to_data(world(point)), dtype=float)

    origin = to_labels(base)
    steps, spacing = [], []
    for axis in range(ndim - 3, ndim):
        step = base.copy()
        step[axis] += 1.0
        steps.append(to_labels(step) - origin)
        spacing.append(float(np.linalg.norm(world(step) - world(base))))
    return GridMapping(origin, np.array(steps), (spacing[0], spacing[1], spacing[2]))


def labels_on_grid(data: np.ndarray, mapping: GridMapping, shape: Sequence[int]) -> np.ndarray:
    """``data`` (a labels layer's array) resampled onto a grid of ``shape`` by nearest neighbour; 0 outside it."""
    out = np.zeros(tuple(shape), dtype=data.dtype if data.dtype.kind in "biu" else np.int64)
    j, k = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    upper = np.array(data.shape)[:, None, None]
    for i in range(shape[0]):  # one slice at a time: bounded memory for big volumes
        coords = mapping.origin[:, None, None] + i * mapping.steps[0][:, None, None]
        coords = coords + j[None] * mapping.steps[1][:, None, None] + k[None] * mapping.steps[2][:, None, None]
        index = np.floor(coords + 0.5).astype(np.int64)
        inside = np.all((index >= 0) & (index < upper), axis=0)
        out[i][inside] = data[tuple(axis[inside] for axis in index)]
    return out


def labels_array(layer: Labels) -> np.ndarray:
    """A copy of the labels (full resolution), so painting during a job changes nothing it reads."""
    data = layer.data[0] if layer.multiscale else layer.data
    return np.array(data)


# ------------------------------------------------------------------------ tasks
def mask_task(run: ExplainDone, data: np.ndarray, mapping: GridMapping, name: str) -> Task:
    """The localisation metrics of the run's heatmap against labels brought onto its grid."""

    def task(progress: Progress, cancel: threading.Event) -> list[MaskScores]:
        progress("mask")
        explanation = run.explanation
        mask = labels_on_grid(data, mapping, explanation.heatmap.shape)
        if not mask.any():
            raise InputError(
                f"no labelled voxel of {name!r} lies over the explained volume: paint the region over the volume"
            )
        return against_mask(explanation, mask, spacing=mapping.spacing)

    return task


def _reference(run: ExplainDone, reference: tuple[VolumeSelection, object] | None) -> np.ndarray | None:
    if reference is None:
        return None
    selection, data = reference
    return selection.read(data)


OCCLUSION = "occlusion"


RunKey = tuple[tuple, tuple]
"""What a result depends on: objects compared by identity (model, layer, arrays), and settings compared by value."""


def explained_input(run: ExplainDone) -> RunKey:
    """What ``run`` explained: the model, the layer and its data read, the selection, the class and the grid."""
    request, explanation = run.request, run.explanation
    objects = (request.loaded, request.source, request.data)
    return objects, (request.selection, explanation.class_idx, explanation.token_cam.shape)


def same_key(a: RunKey, b: RunKey) -> bool:
    """The same objects and equal settings."""
    (objects_a, values_a), (objects_b, values_b) = a, b
    return (
        len(objects_a) == len(objects_b)
        and all(x is y for x, y in zip(objects_a, objects_b, strict=True))
        and values_a == values_b
    )


def same_volume_and_class(run: ExplainDone, other: ExplainDone) -> bool:
    """Whether ``other`` explains what ``run`` explains: the same model, layer data, selection, class and grid."""
    return same_key(explained_input(run), explained_input(other))


def model_task(
    run: ExplainDone,
    baseline: str,
    reference: tuple[VolumeSelection, object] | None,
    random_orders: int = 3,
    *,
    occlusion: VolumeExplanation | None = None,
    make_occlusion: bool = False,
    band: Faithfulness | None = None,
) -> Task:
    """Deletion and insertion curves of the run's map with one baseline.

    Args:
        run: the run whose map is evaluated.
        baseline: what replaces removed patches.
        reference: the reference layer's selection and data, for the ``reference`` baseline.
        random_orders: random orders in the band.
        occlusion: an occlusion map of the same volume and class, drawn beside the map's curves.
        make_occlusion: compute that map first when there is none (one forward pass per patch).
        band: curves of an earlier map of the same volume, class, model and baseline, whose random band is reused.
    """

    def task(progress: Progress, cancel: threading.Event) -> Faithfulness:
        request = run.request
        volume = request.selection.read(request.data)
        compared = {}
        if run.explanation.method != OCCLUSION:
            found = occlusion
            if found is None and make_occlusion:
                progress(OCCLUSION)
                found = explain_alike(
                    request.loaded,
                    volume,
                    run.explanation,
                    OCCLUSION,
                    nonfinite=request.nonfinite,
                    affine=request.affine,
                    cancel=cancel,
                )
            if found is not None:
                compared[OCCLUSION] = found
        return against_model(
            request.loaded,
            volume,
            run.explanation,
            baseline=baseline,
            reference=_reference(run, reference),
            random_orders=random_orders,
            nonfinite=request.nonfinite,
            affine=request.affine,
            compared=compared,
            cancel=cancel,
            progress=counted("model", progress),
            band=band,
        )

    return task


def counted(kind: str, progress: Progress) -> Callable[[int, int], None]:
    """Reports perturbed inputs run as the stage ``kind (done/total inputs)``."""
    return lambda done, total: progress(f"{kind} ({done}/{total} inputs)")


def baselines_task(run: ExplainDone, reference: tuple[VolumeSelection, object] | None) -> Task:
    """The curves for every baseline (the reference too when one is chosen)."""

    def task(progress: Progress, cancel: threading.Event) -> dict[str, Faithfulness]:
        progress("baselines")
        request = run.request
        volume = request.selection.read(request.data)
        return compare_baseline_curves(
            request.loaded,
            volume,
            run.explanation,
            reference=_reference(run, reference),
            nonfinite=request.nonfinite,
            affine=request.affine,
            cancel=cancel,
            progress=counted("baselines", progress),
        )

    return task


def chance_task(run: ExplainDone) -> Task:
    """The cascading randomisation test of the run's map (on a copy of the model)."""

    def task(progress: Progress, cancel: threading.Event) -> RandomizationResult:
        progress("chance")
        request = run.request
        volume = request.selection.read(request.data)
        result = against_chance(
            request.loaded, volume, run.explanation, nonfinite=request.nonfinite, cancel=cancel, affine=request.affine
        )
        if cancel.is_set():
            raise Cancelled("cancelled")
        return result

    return task


# ------------------------------------------------------------------------ the plot
class CurvePlot(FigureCanvasQTAgg):
    """Deletion and insertion curves (top) and the randomisation cascade (bottom)."""

    def __init__(self) -> None:
        figure = Figure(figsize=(4.2, 4.4), layout="constrained")
        super().__init__(figure)
        grid = figure.add_gridspec(2, 2, height_ratios=(1.1, 1.0))
        self.deletion = figure.add_subplot(grid[0, 0])
        self.insertion = figure.add_subplot(grid[0, 1], sharey=self.deletion)
        self.chance = figure.add_subplot(grid[1, :])
        self.setMinimumHeight(340)
        self.clear()

    def _blank(self, ax, title: str, note: str) -> None:
        ax.clear()
        ax.set_title(title, fontsize=8)
        ax.text(0.5, 0.5, note, ha="center", va="center", fontsize=7, color="gray", transform=ax.transAxes)
        ax.tick_params(labelsize=6)

    def clear(self) -> None:
        self._blank(self.deletion, "Deletion", "not run")
        self._blank(self.insertion, "Insertion", "not run")
        self._blank(self.chance, "Randomisation (rank correlation)", "not run")
        self.draw_idle()

    def show_curves(self, result: Faithfulness) -> None:
        for ax, mode, curve in (
            (self.deletion, "deletion", result.deletion),
            (self.insertion, "insertion", result.insertion),
        ):
            ax.clear()
            mean, std = curve.random.mean(axis=0), curve.random.std(axis=0)
            ax.fill_between(curve.fractions, mean - std, mean + std, color="0.75", label="random ± sd")
            ax.plot(curve.fractions, mean, color="0.45", lw=1)
            ax.plot(curve.fractions, curve.ranked, color="C3", lw=1.6, label="map")
            for index, (name, values) in enumerate(curve.compared.items()):
                auc = curve.compared_aucs[name]
                ax.plot(curve.fractions, values, color=f"C{index}", lw=1.2, ls="--", label=f"{name} ({auc:.2f})")
            ax.set_title(f"{mode.capitalize()} AUC {curve.auc:.2f} (rand {curve.random_auc:.2f})", fontsize=8)
            ax.set_xlabel(f"share {'removed' if mode == 'deletion' else 'revealed'} ({result.baseline})", fontsize=7)
            ax.set_ylim(-0.02, 1.02)
            ax.tick_params(labelsize=6)
        self.deletion.set_ylabel("p(class)", fontsize=7)
        self.deletion.legend(fontsize=6, loc="lower left" if result.deletion.ranked[-1] < 0.5 else "best")
        self.draw_idle()

    def show_baselines(self, results: dict[str, Faithfulness]) -> None:
        spread = auc_spread(results)
        for ax, mode in ((self.deletion, "deletion"), (self.insertion, "insertion")):
            ax.clear()
            for index, (name, result) in enumerate(results.items()):
                curve = getattr(result, mode)
                ax.plot(curve.fractions, curve.ranked, color=f"C{index}", lw=1.3, label=f"{name} {curve.auc:.2f}")
            ax.set_title(f"{mode.capitalize()}: AUC moves {spread[mode]:.2f}", fontsize=8)
            ax.set_xlabel("share of patches", fontsize=7)
            ax.set_ylim(-0.02, 1.02)
            ax.tick_params(labelsize=6)
            ax.legend(fontsize=6, title="baseline AUC", title_fontsize=6)
        self.deletion.set_ylabel("p(class)", fontsize=7)
        self.draw_idle()

    def show_chance(self, result: RandomizationResult) -> None:
        ax = self.chance
        ax.clear()
        names = [s.randomized for s in result.steps]
        values = [s.correlation for s in result.steps]
        ax.plot(range(len(values)), values, marker="o", color="C3" if result.survives else "C0", lw=1.4)
        ax.axhline(result.threshold, color="0.5", ls="--", lw=0.8)
        ax.set_xticks(range(len(names)), ["…" + n[-10:] if len(n) > 11 else n for n in names], fontsize=6)
        ax.set_ylim(-1.05, 1.05)
        ax.tick_params(labelsize=6)
        ax.set_ylabel("rank corr.", fontsize=7)
        verdict = (
            "SURVIVES: not a map of what the model learnt" if result.survives else "changes: depends on the weights"
        )
        ax.set_title(f"Randomised top down: {verdict}", fontsize=8, color="C3" if result.survives else "black")
        self.draw_idle()


# ------------------------------------------------------------------------ the panel
def _labels_layers(viewer) -> list[Labels]:
    return [layer for layer in viewer.layers if isinstance(layer, Labels) and layer.ndim >= 3]


class _Scroll(QScrollArea):
    """Scrolls the section's body when the dock is short, instead of squeezing the plot; asks for the body's size."""

    def sizeHint(self) -> QSize:
        inner = self.widget()
        if inner is None:
            return super().sizeHint()
        bar = self.verticalScrollBar()
        room = bar.sizeHint().width() if bar is not None else 0  # the content is never clipped by the bar
        return inner.sizeHint() + QSize(room, 2 * self.frameWidth() + 4)


class EvaluatePanel(QGroupBox):
    """The Evaluate section (collapsible): hand it each finished run with :meth:`set_run`."""

    evaluated = Signal(str, object)  # the kind ("mask", "model", "baselines", "chance") and its result, or None

    def __init__(self, viewer, parent: QWidget | None = None, *, expanded: bool = False):
        super().__init__("Evaluate the heatmap", parent)
        self.viewer = viewer
        self.run: ExplainDone | None = None
        self.layer: Image | None = None
        self.occlusion_run: ExplainDone | None = None
        self._band: tuple[RunKey, Faithfulness] | None = None  # the last curves and what they are of
        self._band_key: RunKey | None = None  # what the running curves are computed for
        self.results: dict[str, object] = {}
        self._job: Job | None = None
        self._kind = ""
        self._job_run: ExplainDone | None = None
        self._result: object = None
        self._named: list[Labels] = []
        self._build()
        self.setCheckable(True)
        self.toggled.connect(self.scroller.setVisible)
        self.setChecked(expanded)
        self.scroller.setVisible(expanded)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.reordered):
            event.connect(self._refresh_labels)
        self._refresh_labels()
        self._update_buttons()

    def _build(self) -> None:
        self.body = QWidget()
        self.subject = QLabel("Run an explanation first: the last run's heatmap is evaluated here.")
        self.subject.setWordWrap(True)

        self.labels_combo = QComboBox()
        self.mask_button = QPushButton("Score against mask")
        self.tolerance_label = QLabel("")
        self.tolerance_label.setWordWrap(True)
        mask_row = QHBoxLayout()
        mask_row.addWidget(self.labels_combo, 1)
        mask_row.addWidget(self.mask_button)

        self.baseline_combo = QComboBox()
        for name in BASELINES:
            self.baseline_combo.addItem(name, name)
        self.baseline_combo.setToolTip(
            "What replaces removed patches. A baseline can itself look like evidence (a blurred or mean patch can "
            "look like a lesion): compare baselines, or give a reference such as a healthy scan."
        )
        self.reference_combo = LayerChoice(self.viewer)
        self.reference_combo.setToolTip("reference volume (e.g. a healthy scan on the same grid)")
        baseline_row = QHBoxLayout()
        baseline_row.addWidget(self.baseline_combo)
        baseline_row.addWidget(self.reference_combo, 1)
        self.occlusion_check = QCheckBox("beside the occlusion map")
        self.occlusion_check.setToolTip(
            "Draw the occlusion map's curves beside this map's: an occlusion run of the same volume and class is "
            "used when there is one; otherwise it is computed first (one forward pass per patch)."
        )
        self.model_button = QPushButton("Deletion / insertion")
        self.baselines_button = QPushButton("Compare baselines")
        self.chance_button = QPushButton("Randomisation test")
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_button)
        model_row.addWidget(self.baselines_button)
        model_row.addWidget(self.chance_button)

        self.plot = CurvePlot()
        self.verdict = QLabel("")
        self.verdict.setWordWrap(True)
        self.table = QTableWidget(0, len(TABLE_HEADER))
        self.table.setHorizontalHeaderLabels(list(TABLE_HEADER))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        rows_header, header = self.table.verticalHeader(), self.table.horizontalHeader()
        assert rows_header is not None and header is not None  # a table has both
        rows_header.setVisible(False)
        for column in range(len(TABLE_HEADER) - 1):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(len(TABLE_HEADER) - 1, QHeaderView.ResizeMode.Stretch)
        self.table.setMinimumHeight(120)
        self.table.setMaximumHeight(220)
        self.status = QLabel("idle")
        self.cancel_button = QPushButton("Cancel")
        self.copy_button = QPushButton("Copy table")
        bottom = QHBoxLayout()
        bottom.addWidget(self.status, 1)
        bottom.addWidget(self.cancel_button)
        bottom.addWidget(self.copy_button)

        form = QFormLayout()
        form.addRow(self.subject)
        form.addRow("Mask", mask_row)
        form.addRow("", self.tolerance_label)
        form.addRow("Baseline", baseline_row)
        form.addRow("", self.occlusion_check)
        form.addRow(model_row)
        body = QVBoxLayout(self.body)
        body.setContentsMargins(0, 0, 0, 0)
        body.addLayout(form)
        body.addWidget(self.plot)
        body.addWidget(self.verdict)
        body.addWidget(self.table)
        body.addLayout(bottom)
        self.scroller = _Scroll()
        self.scroller.setWidget(self.body)
        self.scroller.setWidgetResizable(True)
        self.scroller.setFrameShape(QFrame.Shape.NoFrame)
        self.scroller.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # always there (idle when all fits): a bar that comes and goes re-wraps the text beside it, which loops
        self.scroller.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOn)
        self.scroller.setMinimumHeight(200)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 4)
        outer.addWidget(self.scroller)

        self.mask_button.clicked.connect(self._mask_clicked)
        self.model_button.clicked.connect(self._model_clicked)
        self.baselines_button.clicked.connect(self._baselines_clicked)
        self.chance_button.clicked.connect(self._chance_clicked)
        self.cancel_button.clicked.connect(self.cancel)
        self.copy_button.clicked.connect(self.copy_table)
        self.baseline_combo.currentIndexChanged.connect(self._update_buttons)
        self.reference_combo.changed.connect(self._update_buttons)
        self.labels_combo.currentIndexChanged.connect(self._update_buttons)

    # ------------------------------------------------------------------ state
    def set_run(self, run: ExplainDone | None, layer: Image | None) -> None:
        """Evaluate ``run`` from now on; ``layer`` is its heatmap layer (the numbers go into its metadata).

        An occlusion run is also kept, to draw its curves beside a later run's of the same volume and class.
        """
        self.run, self.layer = run, layer
        if run is not None and run.explanation.method == OCCLUSION:
            self.occlusion_run = run
        if self.results:  # redraw only what showed the previous run's results (a draw takes the GUI thread)
            self.results = {}
            self.plot.clear()
            self.verdict.setText("")
            self._fill_table()
        if run is None:
            self.subject.setText("Run an explanation first: the last run's heatmap is evaluated here.")
        else:
            e = run.explanation
            name = layer.name if layer is not None else "the last heatmap"
            self.subject.setText(f"Evaluating {name!r} (class {e.class_name}, p = {e.probabilities[e.class_idx]:.2f})")
            if e.grid is not None:
                self.tolerance_label.setText(f"tolerant pointing: within half a patch ({self._tolerance_text()})")
        self._update_buttons()

    def comparable_occlusion(self) -> VolumeExplanation | None:
        """The kept occlusion run's map, if it explains what the current run explains (and is not that run)."""
        other, run = self.occlusion_run, self.run
        if other is None or run is None or other is run or not same_volume_and_class(run, other):
            return None
        return other.explanation

    def _tolerance_text(self) -> str:
        if self.run is None or self.run.explanation.grid is None:
            return ""
        source = self.run.request.source
        voxels = patch_tolerance(self.run.explanation)
        units = {str(u) for u in source.units[-3:]}
        unit = units.pop() if len(units) == 1 else "world units"
        scale = np.abs(np.asarray(source.scale[-3:], dtype=float))
        if unit == "pixel" and np.allclose(scale, 1.0):
            return f"{voxels:.3g} voxels"
        return f"{patch_tolerance(self.run.explanation, tuple(scale)):.3g} {unit}, {voxels:.3g} voxels"

    def _refresh_labels(self, *_args) -> None:
        current = self.labels_combo.currentText()
        layers = _labels_layers(self.viewer)
        for layer in layers:  # a renamed layer keeps its place in the list
            if layer not in self._named:
                layer.events.name.connect(self._refresh_labels)
        self._named = [layer for layer in self._named if layer in layers] + [
            layer for layer in layers if layer not in self._named
        ]
        names = [layer.name for layer in layers]
        self.labels_combo.blockSignals(True)
        self.labels_combo.clear()
        self.labels_combo.addItems(names)
        if current in names:
            self.labels_combo.setCurrentIndex(names.index(current))
        self.labels_combo.blockSignals(False)
        self._update_buttons()

    def labels_layer(self) -> Labels | None:
        name = self.labels_combo.currentText()
        return next((layer for layer in _labels_layers(self.viewer) if layer.name == name), None)

    def choose_labels(self, layer: Labels) -> None:
        self._refresh_labels()
        self.labels_combo.setCurrentIndex(self.labels_combo.findText(layer.name))

    def choose_baseline(self, name: str, reference: Image | None = None) -> None:
        self.baseline_combo.setCurrentIndex(self.baseline_combo.findData(name))
        if reference is not None:
            self.reference_combo.choose(reference)

    @property
    def busy(self) -> bool:
        return self._job is not None

    def _update_buttons(self, *_args) -> None:
        idle, ready = self._job is None, self.run is not None
        usable = ready and self.run is not None and self.run.explanation.grid is not None
        self.mask_button.setEnabled(idle and ready and self.labels_layer() is not None)
        needs_reference = self.baseline_combo.currentData() == "reference"
        self.reference_combo.setEnabled(needs_reference)
        reference_ok = not needs_reference or self.reference_combo.layer() is not None
        self.model_button.setEnabled(idle and usable and reference_ok)
        found = self.comparable_occlusion() is not None
        occluding = self.run is not None and self.run.explanation.method == OCCLUSION
        self.occlusion_check.setText(
            "beside the occlusion map " + ("(from the occlusion run)" if found else "(computes it first)")
        )
        self.occlusion_check.setEnabled(idle and usable and not found and not occluding)
        self.baselines_button.setEnabled(idle and usable)
        self.chance_button.setEnabled(idle and usable)
        self.cancel_button.setEnabled(not idle)
        self.copy_button.setEnabled(bool(self.results))

    # ---------------------------------------------------------------- actions
    def _mask_clicked(self) -> None:
        self.score_mask()

    def _model_clicked(self) -> None:
        self.check_model()

    def _baselines_clicked(self) -> None:
        self.compare_baselines()

    def _chance_clicked(self) -> None:
        self.check_chance()

    def score_mask(self, labels: Labels | None = None) -> bool:
        """Score the heatmap against ``labels`` (default: the chosen Labels layer) in a worker."""
        labels = labels if labels is not None else self.labels_layer()
        if self.run is None or labels is None:
            notices.notify("Grad-CAM: choose a Labels layer (the lesion, an organ) and run an explanation first")
            return False
        request = self.run.request
        mapping = grid_mapping(request.source, request.selection, labels, self.viewer.dims.point)
        return self._start("mask", mask_task(self.run, labels_array(labels), mapping, labels.name))

    def _reference(self) -> tuple[VolumeSelection, object] | None:
        layer = self.reference_combo.layer()
        if layer is None or self.run is None:
            return None
        channels = self.run.request.loaded.spec.input.channels
        return select_volume(layer, channels, self.viewer.dims.point), full_resolution(layer)

    def check_model(self) -> bool:
        """Deletion and insertion curves with the chosen baseline, in a worker."""
        if self.run is None:
            return False
        baseline = self.baseline_combo.currentData()
        try:
            reference = self._reference() if baseline == "reference" else None
            if baseline == "reference" and reference is None:
                raise InputError("the reference baseline needs a reference Image layer (e.g. a healthy scan)")
        except VitcamError as error:
            notices.notify_run_error(error)
            return False
        key = self._curves_key(self.run, baseline, reference)
        task = model_task(
            self.run,
            baseline,
            reference,
            occlusion=self.comparable_occlusion(),
            make_occlusion=self.occlusion_check.isChecked(),
            band=self._band[1] if self._band is not None and same_key(self._band[0], key) else None,
        )
        started = self._start("model", task)
        if started:
            self._band_key = key
        return started

    @staticmethod
    def _curves_key(run: ExplainDone, baseline: str, reference: tuple[VolumeSelection, object] | None) -> RunKey:
        """What a random band depends on: what the run explained, its device, the baseline and its reference."""
        objects, settings = explained_input(run)
        reference_selection, reference_data = (None, None) if reference is None else reference
        return (*objects, reference_data), (*settings, run.explanation.device, baseline, reference_selection)

    def compare_baselines(self) -> bool:
        """The curves for every baseline (and the reference layer, when the baseline is ``reference``)."""
        if self.run is None:
            return False
        try:
            reference = self._reference() if self.baseline_combo.currentData() == "reference" else None
        except VitcamError as error:
            notices.notify_run_error(error)
            return False
        return self._start("baselines", baselines_task(self.run, reference))

    def check_chance(self) -> bool:
        """The cascading randomisation test, in a worker (the loaded model is never modified)."""
        if self.run is None:
            return False
        return self._start("chance", chance_task(self.run))

    def cancel(self, *_args) -> None:
        if self._job is not None:
            self._job.cancel()
            self.status.setText("cancelling…")

    # ------------------------------------------------------------------ jobs
    def _start(self, kind: str, task: Task) -> bool:
        if self._job is not None:
            return False
        self._kind, self._job_run, self._result = kind, self.run, None
        self.status.setText(f"{kind}: running…")
        self._job = start_job(task, on_stage=self._on_stage, on_result=self._on_result, on_finished=self._on_finished)
        self.destroyed.connect(self._job.worker.cancel_event.set)
        self._update_buttons()
        return True

    def _on_stage(self, stage: str) -> None:
        if self._job is not None and not self._job.cancelled:
            self.status.setText(f"{stage}: running…")

    def _on_result(self, result: object) -> None:
        if isinstance(result, Failure):
            if not result.expected:
                notices.report_bug(result.error)
            elif not result.cancelled:
                assert isinstance(result.error, VitcamError)
                notices.notify_run_error(result.error)
            return
        if self._job_run is not self.run:  # a new explanation replaced the one evaluated
            return
        self._result = result
        self.show_result(self._kind, result)

    def _on_finished(self) -> None:
        job, kind, result = self._job, self._kind, self._result
        cancelled = job is not None and job.cancelled
        self._job = None
        self.status.setText("cancelled" if cancelled else f"{kind}: done" if result is not None else f"{kind}: failed")
        self._update_buttons()
        self.evaluated.emit(kind, None if cancelled else result)

    # ---------------------------------------------------------------- results
    def show_result(self, kind: str, result: object) -> None:
        """Show a result, record it in the heatmap layer's metadata and in the table."""
        self.results[kind] = result
        if kind == "model":
            assert isinstance(result, Faithfulness)
            self.plot.show_curves(result)
            if self._band_key is not None:  # the next map of the same volume reuses its random band
                self._band, self._band_key = (self._band_key, result), None
        elif kind == "baselines":
            assert isinstance(result, dict)
            self.plot.show_baselines(result)
        elif kind == "chance":
            assert isinstance(result, RandomizationResult)
            self.plot.show_chance(result)
        self.verdict.setText(self.verdict_text())
        self._fill_table()
        self._record()
        self._update_buttons()
        self._grow()

    def _grow(self) -> None:
        """Ask the dock for the body's new height (the scroll area shows what does not fit)."""
        layout = self.body.layout()
        if layout is not None:
            layout.activate()
        self.scroller.updateGeometry()

    def verdict_text(self) -> str:
        lines = []
        masks = self.results.get("mask")
        if isinstance(masks, list):
            for s in masks:
                lines.append(
                    f"label {s.label}: pointing {'hit' if s.pointing_strict else 'miss'} "
                    f"(±½ patch: {'hit' if s.pointing_tolerant else 'miss'}), energy {s.energy:.2f}, IoU {s.iou:.2f}"
                )
        model = self.results.get("model")
        if isinstance(model, Faithfulness):
            d, i = model.deletion, model.insertion
            lines.append(
                f"deletion AUC {d.auc:.2f} vs random {d.random_auc:.2f} ({'beats' if d.beats_random else 'does NOT beat'} "
                f"random); insertion {i.auc:.2f} vs {i.random_auc:.2f}; baseline {model.baseline}"
            )
            for name, auc in d.compared_aucs.items():
                lines.append(f"{name} map: deletion AUC {auc:.2f}, insertion {i.compared_aucs[name]:.2f}")
        baselines = self.results.get("baselines")
        if isinstance(baselines, dict) and baselines:
            spread = auc_spread(baselines)
            lines.append(
                f"between baselines the deletion AUC moves {spread['deletion']:.2f}, insertion {spread['insertion']:.2f}"
            )
        chance = self.results.get("chance")
        if isinstance(chance, RandomizationResult):
            if chance.survives:
                lines.append(
                    f"⚠ the map SURVIVES randomisation (rank corr. {chance.final_correlation:.2f} with every layer "
                    "random): it does not show what the model learnt"
                )
            else:
                lines.append(f"randomisation: the map changes (final rank corr. {chance.final_correlation:.2f})")
        if lines and not self._layer_kept():
            lines.append("the heatmap layer was removed: these results are kept only here (Copy table keeps them)")
        return "\n".join(lines)

    def _layer_kept(self) -> bool:
        """Whether the run's heatmap layer is still in the viewer (its metadata receives the results)."""
        return self.layer is not None and self.layer in self.viewer.layers

    def rows(self) -> list[tuple[str, str, str, str]]:
        masks = self.results.get("mask")
        model = self.results.get("model")
        baselines = self.results.get("baselines")
        chance = self.results.get("chance")
        return table_rows(
            masks if isinstance(masks, list) else (),
            model if isinstance(model, Faithfulness) else None,
            baselines if isinstance(baselines, dict) else None,
            chance if isinstance(chance, RandomizationResult) else None,
        )

    def _fill_table(self) -> None:
        rows = self.rows()
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                self.table.setItem(r, c, QTableWidgetItem(value))

    def table_text(self) -> str:
        """The table, tab-separated, with a header line."""
        return "\n".join("\t".join(row) for row in [TABLE_HEADER, *self.rows()]) + "\n"

    def copy_table(self, *_args) -> None:
        clipboard = QApplication.clipboard()
        if clipboard is not None:
            clipboard.setText(self.table_text())

    def metadata(self) -> dict:
        """The results, JSON-ready, as they go into the heatmap layer's metadata under ``evaluation``."""
        out: dict[str, object] = {}
        masks = self.results.get("mask")
        if isinstance(masks, list):
            out["mask"] = [s.as_dict() for s in masks]
        model = self.results.get("model")
        if isinstance(model, Faithfulness):
            out["model"] = model.as_dict()
        baselines = self.results.get("baselines")
        if isinstance(baselines, dict):
            out["baselines"] = {
                "summaries": {name: r.summary() for name, r in baselines.items()},
                "auc_spread": auc_spread(baselines),
            }
        chance = self.results.get("chance")
        if isinstance(chance, RandomizationResult):
            out["chance"] = chance.as_dict()
        return out

    def _record(self) -> None:
        """Into the metadata of the run's heatmap layer only: a layer this plugin made, still in the viewer."""
        layer = self.layer
        if layer is None or not self._layer_kept():
            return
        layer.metadata = {**layer.metadata, "evaluation": self.metadata()}
