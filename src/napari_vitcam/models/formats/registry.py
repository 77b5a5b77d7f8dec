"""The checkpoint formats, in the order :func:`~napari_vitcam.models.checkpoint.load_checkpoint` asks them.

To add a format, subclass :class:`~napari_vitcam.models.formats.base.CheckpointFormat`
in a module of this package and list an instance here, before the formats
that would also claim its files (:class:`StateDictFile` claims every file, so
it stays last among them).
"""

from __future__ import annotations

from pathlib import Path

from napari_vitcam.core.errors import CheckpointError
from napari_vitcam.models.formats.base import CheckpointFormat, CheckpointSource
from napari_vitcam.models.formats.monai_bundle.format import MonaiBundle
from napari_vitcam.models.formats.native import NativeFile
from napari_vitcam.models.formats.pickled_module import PickledModule
from napari_vitcam.models.formats.state_dict import StateDictFile

#: Asked in order; the first that claims a source loads it.
FORMATS: tuple[CheckpointFormat, ...] = (MonaiBundle(), PickledModule(), NativeFile(), StateDictFile())


def format_for(source: CheckpointSource) -> CheckpointFormat:
    """The first format that claims ``source`` (a folder, or a weights file already read).

    Args:
        source: a folder's path, or a :class:`~napari_vitcam.models.weights.WeightsFile`.
    """
    for candidate in FORMATS:
        if candidate.claims(source):
            return candidate
    if isinstance(source, Path):
        raise CheckpointError(
            f"folder {source.name} is not a MONAI bundle (no configs/inference.json or .yaml): "
            "choose a checkpoint file or a bundle folder"
        )
    raise CheckpointError(f"{source.path.name} is in no format napari-vitcam reads: see docs/checkpoints.md")
