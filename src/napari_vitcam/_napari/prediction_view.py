"""What the model predicted for the volume a run explained: every class, most probable first."""

from __future__ import annotations

from html import escape

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QHeaderView, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from napari_vitcam.pipeline.explain import VolumeExplanation


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
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setMaximumHeight(160)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.headline)
        layout.addWidget(self.table)
        layout.addWidget(self.scores)

    def show_explanation(self, explanation: VolumeExplanation, source_name: str) -> None:
        ranked = explanation.ranked_probabilities
        self.headline.setText(
            f"Predicted for {escape(source_name)}: <b>{escape(explanation.predicted_name)}</b> "
            f"({format_probability(ranked[0][1])})"
        )
        self.scores.setText(
            f"Probabilities: the model's output. Map: the {explanation.class_name} score "
            f"of {explanation.scores_explained}."
        )
        self.table.setRowCount(len(ranked))
        for row, (name, probability) in enumerate(ranked):
            self.table.setItem(row, 0, QTableWidgetItem(name))
            self.table.setItem(row, 1, QTableWidgetItem(format_probability(probability)))

    def rows(self) -> list[tuple[str, str]]:
        """The table's text, top to bottom."""
        return [(self.table.item(r, 0).text(), self.table.item(r, 1).text()) for r in range(self.table.rowCount())]

    def clear(self) -> None:
        self.headline.setText("No prediction yet: run an explanation.")
        self.scores.setText("")
        self.table.setRowCount(0)
