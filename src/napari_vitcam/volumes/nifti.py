"""NIfTI (``.nii``, ``.nii.gz``) through nibabel: the voxels in the file's axis order and nibabel's affine (RAS+, mm)."""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_vitcam.core.vocabulary import one_line
from napari_vitcam.volumes.base import HeatmapWriter, Volume, VolumeFileError, VolumeReader, json_ready
from napari_vitcam.volumes.extras import require

#: Values this low are air in Hounsfield units: such a NIfTI is taken for CT (for the display window only).
HOUNSFIELD_AIR = -900.0

#: Millimetres per the NIfTI spatial unit (the affine of a file in metres or microns is scaled to mm).
_MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 0.001}

DESCRIPTION_BYTES = 80
"""Room in a NIfTI-1 header's description field."""


def _nibabel():
    return require("nibabel", "reading and writing NIfTI files")


class NiftiReader(VolumeReader):
    """NIfTI-1 and NIfTI-2 files, plain or gzipped. 3D volumes (trailing axes of length 1 are dropped)."""

    name = "nifti"
    label = "NIfTI (.nii, .nii.gz)"
    suffixes = (".nii", ".nii.gz")

    def read(self, path: Path, *, key: str | None = None) -> Volume:
        path = Path(path)
        if key is not None:
            raise VolumeFileError(f"{path.name} holds one volume: --key applies to .npz files only")
        nib = _nibabel()
        try:
            image = nib.load(str(path), mmap=False)
            array = np.asanyarray(image.dataobj)
        except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as error:
            raise VolumeFileError(
                f"{path.name} is not a readable NIfTI file ({one_line(error)}): check or re-export it"
            ) from None
        if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
            raise VolumeFileError(f"{path.name} is not a NIfTI image ({type(image).__name__}): convert it to NIfTI")
        if array.dtype.fields is not None or array.dtype.kind not in "biuf":
            raise VolumeFileError(f"{path.name} holds {array.dtype} voxels (e.g. RGB): give a scalar volume")
        while array.ndim > 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim != 3:
            raise VolumeFileError(
                f"{path.name} has shape {array.shape}: give one 3D volume (extract it from a 4D series first)"
            )
        header = image.header
        space_unit = header.get_xyzt_units()[0]
        affine = np.array(image.affine, dtype=float)
        affine[:3, :] *= _MM_PER_UNIT.get(space_unit, 1.0)
        sform_code, qform_code = int(header["sform_code"]), int(header["qform_code"])
        metadata: dict[str, Any] = {
            "sform_code": sform_code,
            "qform_code": qform_code,
            "space_unit": space_unit,
            "description": header["descrip"].tobytes().rstrip(b"\x00").decode("latin-1"),
            "axis_codes": "".join(nib.aff2axcodes(affine)),
        }
        if sform_code == 0 and qform_code == 0:
            metadata["geometry"] = "none in the file (nibabel's default from the voxel sizes)"
        modality = None
        if array.size and array.dtype.kind in "if" and float(np.min(array)) <= HOUNSFIELD_AIR:
            modality = "CT"
            metadata["modality_from"] = "values (Hounsfield units)"
        return Volume(array, affine, path, self.name, modality, metadata)


def describe_heatmap(provenance: Mapping[str, Any]) -> str:
    """A header description (80 bytes at most): generator, method, class, target layer, checkpoint digest."""
    digests = provenance.get("checkpoint_sha256") or {}
    digest = next(iter(digests.values()), "") if isinstance(digests, Mapping) else str(digests)
    parts = [
        "napari-vitcam",
        str(provenance.get("method", "")),
        f"class={provenance.get('class_name', '')}",
        f"at={provenance.get('target_layer', '')}",
    ]
    if digest:
        parts.append(f"sha256={digest[:12]}")
    text = " ".join(parts).encode("ascii", "replace")
    return text[:DESCRIPTION_BYTES].decode("ascii")


class NiftiWriter(HeatmapWriter):
    """A float32 NIfTI-1 with the source's affine (sform and qform), values in [0, 1].

    The header description names the method, class, target layer and the
    checkpoint digest; the full provenance (JSON) is a header extension of
    code 6 ("comment"), which other viewers ignore.
    """

    name = "nifti"
    label = "NIfTI (.nii, .nii.gz)"
    suffixes = (".nii", ".nii.gz")

    def check(self, source: Volume | None = None) -> None:
        _nibabel()

    def write_to(
        self,
        path: Path,
        heatmap: np.ndarray,
        *,
        affine: np.ndarray | None,
        provenance: Mapping[str, Any],
        source: Volume | None = None,
    ) -> None:
        nib = _nibabel()
        matrix = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
        image = nib.Nifti1Image(np.asarray(heatmap, dtype=np.float32), matrix)
        code = 0 if affine is None else 1
        image.set_sform(matrix, code=code)
        image.set_qform(matrix, code=code)
        header = image.header
        header.set_xyzt_units("mm")
        header["descrip"] = describe_heatmap(provenance)
        header["cal_min"], header["cal_max"] = 0.0, 1.0
        header.set_intent("estimate", name="heatmap")
        content = json.dumps(json_ready(provenance), allow_nan=False).encode()
        header.extensions.append(nib.nifti1.Nifti1Extension("comment", content))
        nib.save(image, str(path))


def read_provenance(path: Path) -> dict[str, Any] | None:
    """The provenance a :class:`NiftiWriter` stored in ``path``, or None."""
    nib = _nibabel()
    image = nib.load(str(path))
    for extension in image.header.extensions:
        if extension.get_code() == 6:
            try:
                found = json.loads(extension.get_content())
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(found, dict):
                return found
    return None
