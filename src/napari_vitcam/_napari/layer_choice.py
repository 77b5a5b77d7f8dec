"""A combo box of the viewer's explainable image layers that follows the layer list."""

from __future__ import annotations

from napari.layers import Image, Layer
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QWidget

from napari_vitcam._napari.heatmap_layer import is_heatmap
from napari_vitcam._napari.layer_input import volume_layers


class LayerChoice(QComboBox):
    """Image layers with at least three spatial dimensions, heatmaps excluded.

    Follows layers being added, removed, moved and renamed, and data changes
    that make a layer (un)usable; the current choice is kept while it exists.
    """

    changed = Signal()

    def __init__(self, viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = viewer
        self._layers: list[Image] = []
        self._watched: list[Layer] = []
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.moved, events.reordered):
            event.connect(self._on_layers_changed)
        self.currentIndexChanged.connect(self._on_index_changed)
        self.refresh()

    def _on_layers_changed(self, event=None) -> None:
        self.refresh()

    def _on_index_changed(self, _index: int) -> None:
        self.changed.emit()

    def _watch(self, layers: list[Layer]) -> None:
        for layer in self._watched:
            if layer not in layers:
                layer.events.name.disconnect(self._on_layers_changed)
                layer.events.data.disconnect(self._on_layers_changed)
        for layer in layers:
            if layer not in self._watched:
                layer.events.name.connect(self._on_layers_changed)
                layer.events.data.connect(self._on_layers_changed)
        self._watched = list(layers)

    def refresh(self) -> None:
        current = self.layer()
        images = [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        self._watch(images)
        self._layers = [layer for layer in volume_layers(images) if not is_heatmap(layer)]
        self.blockSignals(True)
        self.clear()
        self.addItems([layer.name for layer in self._layers])
        self.setCurrentIndex(self._layers.index(current) if current in self._layers else 0 if self._layers else -1)
        self.blockSignals(False)
        self.changed.emit()

    def names(self) -> list[str]:
        return [layer.name for layer in self._layers]

    def layer(self) -> Image | None:
        """The chosen layer, or None when there is none to choose."""
        index = self.currentIndex()
        return self._layers[index] if 0 <= index < len(self._layers) else None

    def choose(self, layer: Image | str) -> None:
        """Make ``layer`` (or the layer of that name) the chosen one."""
        self.setCurrentIndex(self.names().index(layer) if isinstance(layer, str) else self._layers.index(layer))
