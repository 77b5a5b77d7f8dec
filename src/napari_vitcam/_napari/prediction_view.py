"""What the model predicted for the volume a run explained: every class, most probable first."""

from __future__ import annotations

from html import escape

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QHeaderView, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from napari_vitcam.core.vocabulary import name_of_class
from napari_vitcam.pipeline.explain import VolumeExplanation
from napari_vitcam.pipeline.sweep import VolumeSweep


def format_probability(probability: float) -> str:
    return f"{100.0 * probability:.1f} %"


class PredictionView(QWidget):
    """A headline (the predicted class) over a table of class probabilities."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.headline = QLabel("No prediction yet: run an explanation.")
        self.headline.setWordWrap(True)
        self.scores = QLabel("")
        self.scores.setWordWrap(True)
        self.scores.setTextFormat(Qt.TextFormat.PlainText)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["class", "probability"])
        vertical, horizontal = self.table.verticalHeader(), self.table.horizontalHeader()
        assert vertical is not None and horizontal is not None  # a new table has both
        vertical.setVisible(False)
        horizontal.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setMaximumHeight(160)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.headline)
        layout.addWidget(self.table)
        layout.addWidget(self.scores)

    def show_explanation(self, explanation: VolumeExplanation, source_name: str) -> None:
        self._show(
            source_name,
            explanation.predicted_name,
            explanation.ranked_probabilities,
            f"Probabilities: the model's output. Map: the {explanation.class_name} score "
            f"of {explanation.scores_explained}.",
        )

    def show_sweep(self, sweep: VolumeSweep, source_name: str) -> None:
        """What the model predicted for the volume a sweep explained (a sweep's maps share one forward pass)."""
        ranked = sorted(
            ((name_of_class(sweep.class_names, i), float(p)) for i, p in enumerate(sweep.probabilities)),
            key=lambda item: -item[1],
        )
        what = "block" if sweep.over == "blocks" else "class"
        self._show(
            source_name, sweep.predicted_name, ranked, f"Probabilities: the model's output. Maps: one per {what}."
        )

    def _show(self, source_name: str, predicted: str, ranked: list[tuple[str, float]], note: str) -> None:
        self.headline.setText(
            f"Predicted for {escape(source_name)}: <b>{escape(predicted)}</b> ({format_probability(ranked[0][1])})"
        )
        self.scores.setText(note)
        self.table.setRowCount(len(ranked))
        for row, (name, probability) in enumerate(ranked):
            self.table.setItem(row, 0, QTableWidgetItem(name))
            self.table.setItem(row, 1, QTableWidgetItem(format_probability(probability)))

    def rows(self) -> list[tuple[str, str]]:
        """The table's text, top to bottom."""
        return [(self._text(r, 0), self._text(r, 1)) for r in range(self.table.rowCount())]

    def _text(self, row: int, column: int) -> str:
        item = self.table.item(row, column)
        return item.text() if item is not None else ""

    def clear(self) -> None:
        self.headline.setText("No prediction yet: run an explanation.")
        self.scores.setText("")
        self.table.setRowCount(0)
