"""The embedded demo: synthetic lesion volumes, a small trained ViT and its evaluation.

* :mod:`.volumes`: the seeded volume generator (:func:`make_volume`).
* :mod:`.train`: ``napari-vitcam train-demo``, trains the shipped demo model.
* :mod:`.evaluate`: ``napari-vitcam evaluate-demo``, accuracy, lesion
  occlusion and whether Grad-CAM points at the lesion.

Pure numpy/torch: nothing here needs Qt or napari.
"""

from napari_vitcam.demo.volumes import CLASS_NAMES, DemoVolume, make_batch, make_volume

__all__ = ["CLASS_NAMES", "DemoVolume", "make_batch", "make_volume"]
