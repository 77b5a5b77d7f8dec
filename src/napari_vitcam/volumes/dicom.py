"""DICOM series through highdicom and pydicom: a folder (or one file) of a series, or one enhanced multi-frame file.

Slices are placed by their ImagePositionPatient along the normal of their
ImageOrientationPatient (highdicom's :func:`highdicom.get_volume_from_series`),
never by InstanceNumber or file name. A series that is not one regularly
spaced stack is refused with the reason (gantry tilt, missing or duplicated
slices, mixed orientations or sizes, several series in one folder) instead of
being guessed into a volume. Pixel values are modality values (rescale slope
and intercept applied: Hounsfield units for CT). The affine is converted from
DICOM's LPS patient coordinates to RAS+ (x and y change sign).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import numpy as np

from napari_vitcam.core.vocabulary import error_detail
from napari_vitcam.volumes.base import HeatmapWriter, Volume, VolumeFileError, VolumeReader
from napari_vitcam.volumes.extras import require

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""DICOM patient coordinates (LPS) to NIfTI world coordinates (RAS): the same points, x and y negated."""

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
#: A folder is taken for a DICOM series when one of its first files is DICOM.
PROBE_FILES = 64
#: Slices whose stacking direction is further than this from their normal are a tilted (sheared) series.
PERPENDICULAR_TOLERANCE = 1e-3
#: Relative variation of slice spacing tolerated (highdicom's default).
SPACING_TOLERANCE = 0.01


def _pydicom():
    return require("pydicom", "reading DICOM files")


def _highdicom():
    return require("highdicom", "reading DICOM series")


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (the ``DICM`` marker after the 128-byte preamble)."""
    try:
        with open(path, "rb") as file:
            file.seek(128)
            return file.read(4) == b"DICM"
    except OSError:
        return False


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


class DicomReader(VolumeReader):
    """A DICOM series: a folder holding one series, one file of a series, or an enhanced multi-frame file."""

    name = "dicom"
    label = "DICOM series (a folder, or one file of it)"
    suffixes = (".dcm", ".dicom", ".ima")
    accepts_directories = True

    def can_read(self, path: Path) -> bool:
        path = Path(path)
        if path.is_dir():
            return any(is_dicom_file(p) for p in _files(path)[:PROBE_FILES])
        return path.is_file() and is_dicom_file(path)

    def read(self, path: Path, *, key: str | None = None) -> Volume:
        path = Path(path)
        if key is not None:
            raise VolumeFileError(f"{path.name} is a DICOM series: --key applies to .npz files only")
        pydicom = _pydicom()
        _highdicom()
        folder = path if path.is_dir() else path.parent
        if path.is_file():
            header = _header(pydicom, path)
            if header is None:
                raise VolumeFileError(f"{path.name} is not a readable DICOM file: give a DICOM file or series folder")
            if int(header.get("NumberOfFrames", 1) or 1) > 1:
                return self._multiframe(path, header)
            series = header.get("SeriesInstanceUID")
            paths = [p for p, h in _headers(pydicom, _files(folder)) if h.get("SeriesInstanceUID") == series]
        else:
            groups: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
            for p, h in _headers(pydicom, _files(folder)):
                groups[str(h.get("SeriesInstanceUID", "?"))].append((p, h))
            if not groups:
                raise VolumeFileError(f"{folder.name} holds no DICOM images: give the folder of one DICOM series")
            if len(groups) > 1:
                described = "; ".join(_describe_series(members) for members in groups.values())
                raise VolumeFileError(
                    f"{folder.name} holds {len(groups)} DICOM series ({described}): "
                    "give one file of the series you want, or a folder with only that series"
                )
            (members,) = groups.values()
            if len(members) == 1 and int(members[0][1].get("NumberOfFrames", 1) or 1) > 1:
                return self._multiframe(*members[0])
            paths = [p for p, _ in members]
        return self._series(folder, sorted(paths))

    def _series(self, folder: Path, paths: list[Path]) -> Volume:
        pydicom, highdicom = _pydicom(), _highdicom()
        if len(paths) < 2:
            raise VolumeFileError(
                f"the DICOM series in {folder.name} has {len(paths)} slice: a single image is not a volume"
            )
        try:
            datasets = [pydicom.dcmread(p) for p in paths]
        except (OSError, ValueError, pydicom.errors.InvalidDicomError) as error:
            raise VolumeFileError(f"cannot read the DICOM series in {folder.name} ({error_detail(error)})") from None
        reason = diagnose_series(datasets)
        if reason is not None:
            raise VolumeFileError(f"the DICOM series in {folder.name} is refused: {reason}")
        try:
            volume = highdicom.get_volume_from_series(datasets, dtype=np.float32)
        except (ValueError, TypeError, AttributeError, NotImplementedError, RuntimeError) as error:
            raise VolumeFileError(
                f"the DICOM series in {folder.name} is refused by highdicom ({error_detail(error)}): "
                "check that it is one regularly spaced stack of slices"
            ) from None
        return self._volume(volume, datasets[0], folder, {"files": len(datasets), "paths": [str(p) for p in paths]})

    def _multiframe(self, path: Path, header: Any) -> Volume:
        highdicom = _highdicom()
        try:
            volume = highdicom.imread(str(path)).get_volume(dtype=np.float32)
        except (ValueError, TypeError, AttributeError, NotImplementedError, RuntimeError, KeyError) as error:
            raise VolumeFileError(
                f"the multi-frame DICOM {path.name} is refused by highdicom ({error_detail(error)}): "
                "its frames must form one regularly spaced stack"
            ) from None
        extra = {"files": 1, "frames": int(header.NumberOfFrames), "paths": [str(path)]}
        return self._volume(volume, header, path, extra)

    def _volume(self, volume: Any, header: Any, source: Path, extra: dict[str, Any]) -> Volume:
        if str(volume.coordinate_system).upper().endswith("SLIDE"):
            raise VolumeFileError(f"{source.name} is a slide-microscopy image: give a radiology series")
        array = np.asarray(volume.array)
        if array.ndim != 3:
            raise VolumeFileError(f"{source.name} gives a volume of shape {array.shape}: give a scalar (grey) series")
        modality = str(header.get("Modality", "")) or None
        metadata: dict[str, Any] = {
            "study_instance_uid": str(header.get("StudyInstanceUID", "")),
            "series_instance_uid": str(header.get("SeriesInstanceUID", "")),
            "frame_of_reference_uid": str(header.get("FrameOfReferenceUID", "")),
            "series_description": str(header.get("SeriesDescription", "")),
            "sop_class_uid": str(header.get("SOPClassUID", "")),
            "affine_lps": np.asarray(volume.affine, dtype=float).tolist(),
            **extra,
        }
        affine = LPS_TO_RAS @ np.asarray(volume.affine, dtype=float)
        return Volume(array, affine, source, self.name, modality, metadata)


def _header(pydicom: Any, path: Path) -> Any | None:
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, ValueError, pydicom.errors.InvalidDicomError):
        return None
    meta = getattr(header, "file_meta", None)
    if meta is not None and meta.get("MediaStorageSOPClassUID") == DICOMDIR_SOP_CLASS:
        return None
    return header


def _headers(pydicom: Any, paths: Iterable[Path]) -> list[tuple[Path, Any]]:
    """The DICOM images among ``paths`` with their headers (other files, DICOMDIR and non-images are skipped)."""
    found = []
    for path in paths:
        if not is_dicom_file(path):
            continue
        header = _header(pydicom, path)
        if header is not None and "Rows" in header:
            found.append((path, header))
    return found


def _describe_series(members: list[tuple[Path, Any]]) -> str:
    header = members[0][1]
    label = str(header.get("SeriesDescription", "") or header.get("Modality", "") or "series")
    number = header.get("SeriesNumber", "")
    return f"{label} #{number}: {len(members)} files" if number != "" else f"{label}: {len(members)} files"


def diagnose_series(datasets: list[Any]) -> str | None:
    """Why single-frame ``datasets`` are not one regularly spaced stack, in words, or None if they are.

    Checks, in order: one series; slice position and orientation present; one
    orientation; one size and pixel spacing; no two slices at one position;
    slices stacked along their normal (no gantry tilt); regular spacing.
    """
    count = len(datasets)
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        return f"the files belong to {len(series)} different series: give one series"
    lacking = sum(1 for ds in datasets if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds)
    if lacking:
        return f"{lacking} of {count} files have no slice position or orientation (not a cross-sectional stack)"
    orientations = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in datasets])
    if np.abs(orientations - orientations[0]).max() > 1e-4:
        kinds = len({tuple(np.round(o, 3)) for o in orientations})
        return f"the slices have {kinds} different orientations (e.g. a localizer mixed in): export one stack"
    sizes = {
        (int(ds.Rows), int(ds.Columns), tuple(round(float(v), 4) for v in ds.get("PixelSpacing", ())))
        for ds in datasets
    }
    if len(sizes) > 1:
        return f"the slices differ in size or pixel spacing ({len(sizes)} kinds): export one stack"
    normal = np.cross(orientations[0, :3], orientations[0, 3:])
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    positions = positions[np.argsort(positions @ normal, kind="stable")]
    steps = np.diff(positions, axis=0)
    lengths = np.linalg.norm(steps, axis=1)
    shared = int(np.sum(lengths < 1e-3))
    if shared:
        return (
            f"{shared + 1} slices share a position (several acquisitions, echoes or time points in one series): "
            "export them as separate series"
        )
    alignment = np.abs(steps @ normal) / lengths
    if alignment.min() < 1 - PERPENDICULAR_TOLERANCE:
        angle = float(np.degrees(np.arccos(np.clip(alignment.min(), -1.0, 1.0))))
        return (
            f"the slices are stacked {angle:.1f}° off their normal (gantry tilt): "
            "resample it to a regular volume first (e.g. dcm2niix corrects gantry tilt)"
        )
    if lengths.max() - lengths.min() > SPACING_TOLERANCE * lengths.mean():
        return (
            f"the slice spacing varies from {lengths.min():.3g} to {lengths.max():.3g} mm (missing slices or "
            "variable spacing): export a regularly spaced series or resample it"
        )
    return None


#: A private code (DICOM's "99" prefix) for what the map's values are: the explainer's class activation.
CLASS_ACTIVATION = ("CAM", "99VITCAM", "Class activation map")


def _version() -> str:
    try:
        return package_metadata.version("napari-vitcam")
    except package_metadata.PackageNotFoundError:
        return "unknown"


class ParametricMapWriter(HeatmapWriter):
    """A DICOM Parametric Map (highdicom) of a DICOM series: float pixels on the source's frame of reference.

    The map references the source series (same study, frame of reference and
    geometry), so a PACS stores it beside the study and a viewer overlays it.
    Its values (0..1) are coded as a class activation (a private code, no
    unit); the content description names the method and class.
    """

    name = "dicom-pm"
    label = "DICOM Parametric Map (.dcm)"
    suffixes = (".dcm",)

    def check(self, source: Volume | None = None) -> None:
        _pydicom()
        _highdicom()
        if source is None or source.format != "dicom" or "paths" not in source.metadata:
            raise VolumeFileError(
                "a DICOM Parametric Map (.dcm) is written only for a DICOM series: save the heatmap as .nii.gz"
            )

    def write_to(
        self,
        path: Path,
        heatmap: np.ndarray,
        *,
        affine: np.ndarray | None,
        provenance: Mapping[str, Any],
        source: Volume | None = None,
    ) -> None:
        self.check(source)
        assert source is not None
        pydicom, highdicom = _pydicom(), _highdicom()
        from pydicom.sr.coding import Code

        datasets = [pydicom.dcmread(p) for p in source.metadata["paths"]]
        first = datasets[0]
        geometry = highdicom.Volume(
            np.ascontiguousarray(heatmap, dtype=np.float32),
            np.asarray(source.metadata["affine_lps"], dtype=float),
            coordinate_system="PATIENT",
            frame_of_reference_uid=str(first.FrameOfReferenceUID),
        )
        described = f"{provenance.get('method', 'heatmap')} {provenance.get('class_name', '')}".strip()
        mapping = highdicom.pm.RealWorldValueMapping(
            lut_label="vitcam",
            lut_explanation=described[:64],
            unit=Code("1", "UCUM", "no units"),
            value_range=(0.0, 1.0),
            slope=1.0,
            intercept=0.0,
            quantity_definition=Code(*CLASS_ACTIVATION),
        )
        parametric_map = highdicom.pm.ParametricMap(
            source_images=datasets,
            pixel_array=geometry,
            series_instance_uid=highdicom.UID(),
            series_number=int(first.get("SeriesNumber", 0) or 0) + 1000,
            sop_instance_uid=highdicom.UID(),
            instance_number=1,
            manufacturer="napari-vitcam",
            manufacturer_model_name="napari-vitcam",
            software_versions=_version(),
            device_serial_number="none",
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[highdicom.VOILUTTransformation(window_center=0.5, window_width=1.0)],
            content_label="HEATMAP",
            content_description=described[:64],
        )
        parametric_map.save_as(path)
