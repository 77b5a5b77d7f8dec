"""napari glue: the dock widget, its workers, the heatmap layer, the sample data and the demo app.

A thin layer over the engine: modules here choose what to explain from the
viewer's layers and show what the engine computed. Only :mod:`.widget`,
:mod:`.worker`, :mod:`.prediction_view`, :mod:`.stall` and :mod:`.demo_app`
import Qt.
"""
