"""The pipeline: a volume and a loaded model in, a heatmap at the volume's shape out.

Preprocessing (:mod:`.preprocess`), device choice (:mod:`.devices`) and
:func:`~napari_vitcam.pipeline.explain.explain_volume`. No Qt, no napari.
"""
