"""NumPy files: ``.npy`` (one array) and ``.npz`` (several, chosen by key). No geometry; never unpickled."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_vitcam.core.vocabulary import one_line
from napari_vitcam.volumes.base import HeatmapWriter, Volume, VolumeFileError, VolumeReader


def _checked(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype.hasobject or array.dtype.kind not in "biuf":
        raise VolumeFileError(
            f"{what} holds {array.dtype} values, not numbers: save the volume as a numeric array "
            "(e.g. np.save(path, volume.astype(np.float32)))"
        )
    return array


def _load_error(path: Path, error: Exception) -> VolumeFileError:
    text = str(error)
    if "allow_pickle" in text or "Object arrays" in text:
        return VolumeFileError(
            f"{path.name} holds Python objects, which are never unpickled: save the volume as a numeric array"
        )
    return VolumeFileError(f"{path.name} is not a readable NumPy file ({one_line(error)}): check or re-save it")


class NpyReader(VolumeReader):
    """``.npy``: one numeric array, (D, H, W) or (C, D, H, W)."""

    name = "npy"
    label = "NumPy (.npy)"
    suffixes = (".npy",)

    def read(self, path: Path, *, key: str | None = None) -> Volume:
        path = Path(path)
        if key is not None:
            raise VolumeFileError(f"{path.name} holds one array: --key applies to .npz files only")
        try:
            with open(path, "rb") as file:
                array = np.load(file, allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise _load_error(path, error) from None
        if not isinstance(array, np.ndarray):
            raise VolumeFileError(f"{path.name} is not a .npy array file: save the volume with np.save")
        return Volume(_checked(array, path.name), None, path, self.name)


class NpzReader(VolumeReader):
    """``.npz``: the one array it holds, or the one named by ``key``."""

    name = "npz"
    label = "NumPy archive (.npz)"
    suffixes = (".npz",)

    def keys(self, path: Path) -> list[str]:
        """The names of the arrays in the archive (reads no voxels)."""
        try:
            with open(path, "rb") as file, np.load(file, allow_pickle=False) as data:
                return list(data.files)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise _load_error(Path(path), error) from None

    def read(self, path: Path, *, key: str | None = None) -> Volume:
        path = Path(path)
        keys = self.keys(path)
        if not keys:
            raise VolumeFileError(f"{path.name} holds no arrays: give a file with the volume in it")
        if key is None:
            if len(keys) > 1:
                raise VolumeFileError(
                    f"{path.name} holds {len(keys)} arrays ({', '.join(keys)}): choose the volume with --key NAME"
                )
            key = keys[0]
        elif key not in keys:
            raise VolumeFileError(f"{path.name} has no array {key!r}: choose one of {', '.join(keys)}")
        try:
            with open(path, "rb") as file, np.load(file, allow_pickle=False) as data:
                array = data[key]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise _load_error(path, error) from None
        return Volume(_checked(array, f"{path.name}[{key!r}]"), None, path, self.name, metadata={"key": key})


class NpyWriter(HeatmapWriter):
    """``.npy``: the map alone (no geometry, no provenance)."""

    name = "npy"
    label = "NumPy (.npy)"
    suffixes = (".npy",)

    def write_to(
        self,
        path: Path,
        heatmap: np.ndarray,
        *,
        affine: np.ndarray | None,
        provenance: Mapping[str, Any],
        source: Volume | None = None,
    ) -> None:
        with open(path, "wb") as file:  # a file object: np.save adds no suffix
            np.save(file, np.asarray(heatmap, dtype=np.float32), allow_pickle=False)
