"""Volume I/O: reading volumes from files and writing heatmaps, one registry of file formats.

Shared by the command line and the napari reader and writer. No Qt, no napari.

- :mod:`.base`: :class:`Volume` (the array as stored, read-only, and its voxel-to-RAS affine in mm),
  the :class:`VolumeReader` and :class:`HeatmapWriter` interfaces.
- :mod:`.registry`: the list of formats (add a format there): ``.npy``/``.npz`` (:mod:`.numpy_files`),
  NIfTI (:mod:`.nifti`, nibabel), DICOM series (:mod:`.dicom`, highdicom/pydicom).
- :mod:`.geometry`: RAS, LPS and the napari world; :mod:`.writing`: checked, atomic heatmap files.
"""

from napari_vitcam.volumes.base import HeatmapWriter, Volume, VolumeFileError, VolumeReader
from napari_vitcam.volumes.registry import READERS, WRITERS, read_volume, reader_for, writer_for
from napari_vitcam.volumes.writing import check_output, write_heatmap

__all__ = [
    "READERS",
    "WRITERS",
    "HeatmapWriter",
    "Volume",
    "VolumeFileError",
    "VolumeReader",
    "check_output",
    "read_volume",
    "reader_for",
    "write_heatmap",
    "writer_for",
]
