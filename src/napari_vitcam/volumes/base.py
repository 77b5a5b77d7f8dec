"""What a volume file format provides: a :class:`VolumeReader` that returns a :class:`Volume`, a :class:`HeatmapWriter`.

A :class:`Volume` is the array exactly as the file stores it (axis order
included; read-only, never modified) and its voxel-to-world geometry: a 4x4
affine from array indices to RAS+ millimetres (NIfTI's and nibabel's
convention: x grows toward the patient's right, y toward anterior, z toward superior),
or None where the format has no geometry (``.npy``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from napari_vitcam.core.errors import VitcamError


class VolumeFileError(VitcamError, ValueError):
    """A volume file cannot be read, or a heatmap file cannot be written where asked."""


class LayerWriteError(VitcamError, OSError):
    """A layer cannot be saved in the format asked (an OSError, so that napari shows it instead of
    reading a ValueError as "no writer fits")."""


@dataclass(frozen=True)
class Volume:
    """A volume read from a file.

    Args:
        array: the voxels, in the file's own axis order ((D, H, W), or (C, D, H, W) for several channels);
            read-only.
        affine: 4x4 from array indices (the last three axes) to RAS+ world coordinates in mm, or None
            when the file has no geometry.
        source: the file or folder read.
        format: the reader's name (``npy``, ``npz``, ``nifti``, ``dicom``).
        modality: ``CT``, ``MR``... where the file says (or, for NIfTI, where the values are plainly
            Hounsfield units), else None.
        metadata: what else the reader found worth keeping (JSON-ready values).
    """

    array: np.ndarray
    affine: np.ndarray | None
    source: Path
    format: str
    modality: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.flags.writeable:
            view = self.array.view()
            view.flags.writeable = False
            object.__setattr__(self, "array", view)
        if self.affine is not None:
            affine = np.array(self.affine, dtype=float)
            if affine.shape != (4, 4):
                raise ValueError(f"an affine is 4x4, not {affine.shape}")
            affine.flags.writeable = False
            object.__setattr__(self, "affine", affine)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape[-3:])

    @property
    def spacing(self) -> tuple[float, float, float] | None:
        """Voxel size along the array's last three axes, in mm (None without geometry)."""
        if self.affine is None:
            return None
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary: source, format, shape, dtype, modality, affine, spacing."""
        return {
            "source": str(self.source),
            "format": self.format,
            "shape": list(self.array.shape),
            "dtype": str(self.array.dtype),
            "modality": self.modality,
            "affine_ras": None if self.affine is None else self.affine.tolist(),
            "spacing_mm": None if self.spacing is None else list(self.spacing),
        }


def path_suffix(path: Path, suffixes: tuple[str, ...]) -> str | None:
    """The longest of ``suffixes`` that ``path``'s name ends with (case-insensitive), or None."""
    name = Path(path).name.lower()
    matches = [s for s in suffixes if name.endswith(s) and len(name) > len(s)]
    return max(matches, key=len) if matches else None


class VolumeReader(ABC):
    """Reads one file format into a :class:`Volume`. Register new formats in :mod:`.registry`."""

    name: ClassVar[str]
    """Short name, also :attr:`Volume.format`."""
    label: ClassVar[str]
    """What the format is called in messages (``"NIfTI (.nii, .nii.gz)"``)."""
    suffixes: ClassVar[tuple[str, ...]] = ()
    """File name endings, lower case, with the dot."""
    accepts_directories: ClassVar[bool] = False
    """Whether a folder can be one volume (a DICOM series)."""

    def can_read(self, path: Path) -> bool:
        """Whether ``path`` looks like this format (by name; cheap, reads no voxels)."""
        return Path(path).is_file() and path_suffix(path, self.suffixes) is not None

    @abstractmethod
    def read(self, path: Path, *, key: str | None = None) -> Volume:
        """Read the volume at ``path``.

        Args:
            path: the file (or folder) to read.
            key: which array of a container holding several (``.npz``); other formats refuse it.

        Raises:
            VolumeFileError: one line saying what is wrong with the file and what to do.
            MissingExtraError: the format needs a package that is not installed.
        """


class HeatmapWriter(ABC):
    """Writes a heatmap (float32, the source's spatial shape) with the source's geometry."""

    name: ClassVar[str]
    label: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]] = ()

    def check(self, source: Volume | None = None) -> None:  # noqa: B027  (optional hook)
        """Raise now what writing would raise later for want of a package or of a suitable ``source``.

        Args:
            source: the volume the heatmap will be of (a DICOM writer needs its series).
        """

    @abstractmethod
    def write_to(
        self,
        path: Path,
        heatmap: np.ndarray,
        *,
        affine: np.ndarray | None,
        provenance: Mapping[str, Any],
        source: Volume | None = None,
    ) -> None:
        """Write ``heatmap`` to ``path`` (a fresh temporary file; :func:`.writing.write_heatmap` renames it).

        Args:
            path: where to write; it ends with one of :attr:`suffixes`.
            heatmap: the map, (D, H, W) in the source's axis order.
            affine: the source's voxel-to-RAS affine in mm, or None when the source had no geometry.
            provenance: method, target layer, class, checkpoint digests... (JSON-ready) to store with the map.
            source: the volume the map is of, for formats that reference it (DICOM).
        """


def json_ready(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as Python values and non-finite floats as None (valid JSON)."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
