"""Writing small NIfTI files and DICOM series with known geometry, for the tests and the docs.

Everything here writes real files with the field's libraries (nibabel,
pydicom), so that the readers are tested on what a scanner or a converter
would produce: oblique, flipped and anisotropic NIfTI affines; CT series whose
files are shuffled, whose pixels are rescaled by slope and intercept, or whose
slices are not regularly spaced.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"


def rotation(axis: int, degrees: float) -> np.ndarray:
    """A 3x3 rotation by ``degrees`` about world axis ``axis`` (0, 1 or 2)."""
    angle = np.deg2rad(degrees)
    c, s = np.cos(angle), np.sin(angle)
    i, j = [k for k in range(3) if k != axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


def oblique_affine(
    spacing: Sequence[float] = (3.0, 0.8, 0.8),
    degrees: float = 15.0,
    flip: int | None = 1,
    origin: Sequence[float] = (-40.0, 25.0, 12.5),
) -> np.ndarray:
    """A 4x4 voxel-to-world affine: anisotropic ``spacing``, rotated, one axis flipped, shifted to ``origin``."""
    linear = rotation(2, degrees) @ rotation(0, degrees / 3) @ np.diag(spacing)
    if flip is not None:
        linear[:, flip] *= -1
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = origin
    return affine


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """``array`` as a NIfTI-1 file (``.nii`` or ``.nii.gz``) with ``affine`` in both the sform and the qform."""
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(array), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))
    return Path(path)


@dataclass(frozen=True)
class SeriesGeometry:
    """Where a DICOM series lies in the patient (LPS, mm), as the files will say.

    ``row_cosine`` is DICOM's first ImageOrientationPatient triplet (the
    direction of increasing column index), ``column_cosine`` the second
    (increasing row index). ``positions`` overrides the regular slice
    positions (to write an irregular series).
    """

    origin: tuple[float, float, float] = (-60.0, -80.0, 30.0)
    row_cosine: tuple[float, float, float] = (1.0, 0.0, 0.0)
    column_cosine: tuple[float, float, float] = (0.0, 1.0, 0.0)
    pixel_spacing: tuple[float, float] = (0.7, 0.9)  # (between rows, between columns)
    slice_spacing: float = 2.5
    positions: tuple[tuple[float, float, float], ...] | None = None

    def normal(self) -> np.ndarray:
        return np.cross(self.row_cosine, self.column_cosine)

    def slice_positions(self, count: int) -> list[tuple[float, float, float]]:
        if self.positions is not None:
            return [tuple(map(float, p)) for p in self.positions]  # type: ignore[misc]
        step = self.slice_spacing * self.normal()
        return [tuple(float(v) for v in np.asarray(self.origin) + k * step) for k in range(count)]  # type: ignore[misc]

    def voxel_to_lps(self) -> np.ndarray:
        """The affine from (slice, row, column) indices to LPS mm, for a regular series."""
        affine = np.eye(4)
        affine[:3, 0] = self.slice_spacing * self.normal()
        affine[:3, 1] = self.pixel_spacing[0] * np.asarray(self.column_cosine)
        affine[:3, 2] = self.pixel_spacing[1] * np.asarray(self.row_cosine)
        affine[:3, 3] = self.origin
        return affine


def _uid() -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid())


def _base_dataset(sop_class: str, study_uid: str, series_uid: str, frame_uid: str, modality: str):
    from pydicom.dataset import Dataset as PydicomDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    ds = PydicomDataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(_uid())
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.Modality = modality
    ds.PatientName = "Test^Phantom"
    ds.PatientID = "phantom"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    today = datetime.date(2026, 1, 1).strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "napari-vitcam tests"
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    return ds


def write_ct_series(
    folder: Path,
    stored: np.ndarray,
    geometry: SeriesGeometry | None = None,
    *,
    slope: float = 1.0,
    intercept: float = -1024.0,
    shuffle_seed: int | None = 0,
    modality: str = "CT",
    series_uid: str | None = None,
    instance_numbers: Sequence[int] | None = None,
) -> list[Path]:
    """``stored`` ((slices, rows, columns) int16 stored values) as one single-frame CT file per slice.

    Real values are ``stored * slope + intercept`` (Hounsfield units for CT).
    Files get random names (``shuffle_seed``; None keeps slice order) so that
    nothing can rely on the order of names. ``instance_numbers`` writes
    misleading InstanceNumbers (a reader must sort by position instead).
    Returns the paths in slice order.
    """
    from pydicom.dataset import Dataset as PydicomDataset  # noqa: F401  (pydicom is needed)

    geometry = geometry or SeriesGeometry()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stored = np.asarray(stored)
    if stored.dtype != np.int16:
        raise ValueError("stored values must be int16")
    count, rows, columns = stored.shape
    study_uid, frame_uid = _uid(), _uid()
    series_uid = series_uid or _uid()
    names = [f"IM{index:04d}" for index in range(count)]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(names)
    paths = []
    for index, position in enumerate(geometry.slice_positions(count)):
        ds = _base_dataset(CT_IMAGE_STORAGE, study_uid, series_uid, frame_uid, modality)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = instance_numbers[index] if instance_numbers is not None else index + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*geometry.row_cosine, *geometry.column_cosine)]
        ds.PixelSpacing = [f"{v:.6f}" for v in geometry.pixel_spacing]
        ds.SliceThickness = f"{geometry.slice_spacing:.6f}"
        ds.Rows, ds.Columns = rows, columns
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleType = "HU"
        ds.KVP = "120"
        ds.PixelData = np.ascontiguousarray(stored[index]).tobytes()
        path = folder / names[index]
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_enhanced_ct(
    path: Path,
    stored: np.ndarray,
    geometry: SeriesGeometry | None = None,
    *,
    slope: float = 1.0,
    intercept: float = -1024.0,
    frame_order: Sequence[int] | None = None,
) -> Path:
    """``stored`` as one enhanced (multi-frame) CT file; ``frame_order`` stores the slices in another order."""
    from pydicom.dataset import Dataset as PydicomDataset
    from pydicom.sequence import Sequence as PydicomSequence

    geometry = geometry or SeriesGeometry()
    stored = np.asarray(stored)
    count, rows, columns = stored.shape
    order = list(frame_order) if frame_order is not None else list(range(count))
    ds = _base_dataset(ENHANCED_CT_IMAGE_STORAGE, _uid(), _uid(), _uid(), "CT")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.NumberOfFrames = count
    ds.Rows, ds.Columns = rows, columns
    ds.ContentQualification = "RESEARCH"
    ds.BurnedInAnnotation = "NO"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.AcquisitionDateTime = "20260101120000"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]

    measures = PydicomDataset()
    measures.PixelSpacing = [f"{v:.6f}" for v in geometry.pixel_spacing]
    measures.SliceThickness = f"{geometry.slice_spacing:.6f}"
    measures.SpacingBetweenSlices = f"{geometry.slice_spacing:.6f}"
    orientation = PydicomDataset()
    orientation.ImageOrientationPatient = [f"{v:.6f}" for v in (*geometry.row_cosine, *geometry.column_cosine)]
    rescale = PydicomDataset()
    rescale.RescaleSlope = f"{slope:g}"
    rescale.RescaleIntercept = f"{intercept:g}"
    rescale.RescaleType = "HU"
    shared = PydicomDataset()
    shared.PixelMeasuresSequence = PydicomSequence([measures])
    shared.PlaneOrientationSequence = PydicomSequence([orientation])
    shared.PixelValueTransformationSequence = PydicomSequence([rescale])
    ds.SharedFunctionalGroupsSequence = PydicomSequence([shared])

    positions = geometry.slice_positions(count)
    frames = []
    for index in order:
        plane = PydicomDataset()
        plane.ImagePositionPatient = [f"{v:.6f}" for v in positions[index]]
        content = PydicomDataset()
        content.StackID = "1"
        content.InStackPositionNumber = index + 1
        group = PydicomDataset()
        group.PlanePositionSequence = PydicomSequence([plane])
        group.FrameContentSequence = PydicomSequence([content])
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = PydicomSequence(frames)
    ds.PixelData = np.ascontiguousarray(stored[order]).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def lps_to_ras(points: np.ndarray) -> np.ndarray:
    """Points (…, 3) from DICOM's LPS patient coordinates to NIfTI's RAS (x and y change sign)."""
    return np.asarray(points, dtype=float) * np.array([-1.0, -1.0, 1.0])
