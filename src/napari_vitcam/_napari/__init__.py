"""The napari front end: the dock widget, its jobs, the heatmap layer and the plugin manifest.

A thin layer over the pipeline: modules here choose what to explain from the
viewer's layers and show what the pipeline computed. The manifest
(``napari.yaml``) lives beside this file.
"""
