"""The volume file formats: the one place to add a reader or a heatmap writer.

To add a format, write a :class:`~napari_vitcam.volumes.base.VolumeReader`
(and, if heatmaps can be saved in it, a
:class:`~napari_vitcam.volumes.base.HeatmapWriter`) in its own module and list
it below. The command line and the napari reader and writer use these lists.
"""

from __future__ import annotations

from pathlib import Path

from napari_vitcam.volumes.base import HeatmapWriter, Volume, VolumeFileError, VolumeReader, path_suffix
from napari_vitcam.volumes.dicom import DicomReader, ParametricMapWriter
from napari_vitcam.volumes.nifti import NiftiReader, NiftiWriter
from napari_vitcam.volumes.numpy_files import NpyReader, NpyWriter, NpzReader

READERS: tuple[VolumeReader, ...] = (NpyReader(), NpzReader(), NiftiReader(), DicomReader())
"""Every volume reader, tried in this order."""

WRITERS: tuple[HeatmapWriter, ...] = (NpyWriter(), NiftiWriter(), ParametricMapWriter())
"""Every heatmap writer; the output file's suffix chooses one."""


def reader_labels() -> str:
    return ", ".join(reader.label for reader in READERS)


def reader_for(path: Path) -> VolumeReader:
    """The reader for ``path`` (by suffix, then by content: a DICOM file or folder).

    Raises:
        VolumeFileError: ``path`` does not exist or no format fits.
    """
    path = Path(path)
    if not path.exists():
        raise VolumeFileError(f"{path} does not exist: give a volume file or a DICOM series folder")
    for reader in READERS:
        if reader.can_read(path):
            return reader
    raise VolumeFileError(f"cannot read {path.name}: give one of {reader_labels()}")


def read_volume(path: Path, *, key: str | None = None) -> Volume:
    """The volume at ``path``, read by the format that fits it.

    Args:
        path: a ``.npy``/``.npz``/``.nii``/``.nii.gz`` file, a DICOM file of a series, or a DICOM series folder.
        key: the array to take from an ``.npz`` holding several.
    """
    return reader_for(path).read(Path(path), key=key)


def writer_suffixes() -> tuple[str, ...]:
    return tuple(suffix for writer in WRITERS for suffix in writer.suffixes)


def writer_for(path: Path) -> HeatmapWriter:
    """The heatmap writer that ``path``'s suffix names, or a one-line :class:`VolumeFileError` listing the choices."""
    for writer in WRITERS:
        if path_suffix(path, writer.suffixes) is not None:
            return writer
    raise VolumeFileError(
        f"cannot write a heatmap as {Path(path).name}: end the file name with one of {', '.join(writer_suffixes())}"
    )
