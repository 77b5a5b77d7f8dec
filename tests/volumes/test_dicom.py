"""DICOM series through highdicom: slices placed by position (never by instance number or file name),
modality values, the geometry pydicom reads from each file, and clear refusals of what is not one regular volume."""

import numpy as np
import pydicom
import pytest

from napari_vitcam.testing.scans import SeriesGeometry, lps_to_ras, write_ct_series, write_enhanced_ct
from napari_vitcam.volumes import VolumeFileError, read_volume, reader_for

OBLIQUE = SeriesGeometry(
    origin=(-60.0, -80.0, 30.0),
    row_cosine=(np.cos(0.2), np.sin(0.2), 0.0),
    column_cosine=(-np.sin(0.2) * np.cos(0.3), np.cos(0.2) * np.cos(0.3), np.sin(0.3)),
    pixel_spacing=(0.7, 0.9),
    slice_spacing=2.5,
)


@pytest.fixture
def stored():
    return np.random.default_rng(0).integers(0, 3000, size=(7, 10, 12)).astype(np.int16)


def world_of(volume, index):
    return (volume.affine @ np.r_[np.asarray(index, float), 1.0])[:3]


def check_against_pydicom(volume, paths, slope, intercept):
    """Every file's pixels are where pydicom's ImagePositionPatient/Orientation/PixelSpacing say, in modality values."""
    inverse = np.linalg.inv(volume.affine)
    for path in paths:
        ds = pydicom.dcmread(path)
        first = lps_to_ras(np.asarray(ds.ImagePositionPatient, float))
        k, r, c = (inverse @ np.r_[first, 1.0])[:3]
        assert abs(r) < 1e-4 and abs(c) < 1e-4 and abs(k - round(k)) < 1e-4
        np.testing.assert_allclose(volume.array[round(k)], ds.pixel_array * slope + intercept)
        row_cos, col_cos = (
            np.asarray(ds.ImageOrientationPatient[:3], float),
            np.asarray(ds.ImageOrientationPatient[3:], float),
        )
        last = np.asarray(ds.ImagePositionPatient, float) + (ds.Rows - 1) * ds.PixelSpacing[0] * col_cos
        last = last + (ds.Columns - 1) * ds.PixelSpacing[1] * row_cos
        np.testing.assert_allclose(
            world_of(volume, (round(k), ds.Rows - 1, ds.Columns - 1)), lps_to_ras(last), atol=1e-4
        )


def test_a_shuffled_series_with_misleading_instance_numbers_is_stacked_by_position(tmp_path, stored):
    misleading = [3, 1, 7, 2, 6, 5, 4]
    paths = write_ct_series(
        tmp_path / "ct", stored, OBLIQUE, slope=2.0, intercept=-1000.0, shuffle_seed=3, instance_numbers=misleading
    )
    volume = read_volume(tmp_path / "ct")
    assert volume.format == "dicom" and volume.modality == "CT" and volume.array.shape == (7, 10, 12)
    assert not volume.array.flags.writeable
    check_against_pydicom(volume, paths, 2.0, -1000.0)
    np.testing.assert_allclose(volume.spacing, (2.5, 0.7, 0.9), rtol=1e-5)


def test_one_file_of_a_series_reads_the_whole_series(tmp_path, stored):
    paths = write_ct_series(tmp_path / "ct", stored, OBLIQUE)
    (tmp_path / "ct" / "README.txt").write_text("not DICOM")
    whole = read_volume(tmp_path / "ct")
    one = read_volume(paths[4])
    np.testing.assert_array_equal(one.array, whole.array)
    np.testing.assert_allclose(one.affine, whole.affine)
    assert reader_for(paths[4]).name == "dicom"


def test_an_enhanced_multiframe_file_with_frames_out_of_order(tmp_path, stored):
    path = write_enhanced_ct(
        tmp_path / "enhanced.dcm", stored, OBLIQUE, slope=1.0, intercept=-1024.0, frame_order=[4, 0, 6, 2, 1, 5, 3]
    )
    series = read_volume(write_ct_series(tmp_path / "ct", stored, OBLIQUE, intercept=-1024.0)[0])
    volume = read_volume(path)
    assert volume.metadata["frames"] == 7
    for k in range(7):
        np.testing.assert_allclose(world_of(volume, (k, 0, 0)), world_of(series, (k, 0, 0)), atol=1e-4)
    np.testing.assert_array_equal(volume.array, series.array)


def refused(tmp_path, geometry, stored, match):
    write_ct_series(tmp_path / "bad", stored, geometry)
    with pytest.raises(VolumeFileError, match=match) as info:
        read_volume(tmp_path / "bad")
    assert "\n" not in str(info.value)


def shifted(geometry, count, index, offset):
    positions = [np.asarray(p) for p in geometry.slice_positions(count)]
    positions[index] = positions[index] + offset
    return SeriesGeometry(
        row_cosine=geometry.row_cosine, column_cosine=geometry.column_cosine, positions=tuple(map(tuple, positions))
    )


def test_irregular_spacing_is_refused(tmp_path, stored):
    geometry = shifted(OBLIQUE, 7, 3, 1.0 * OBLIQUE.normal())
    refused(tmp_path, geometry, stored, r"bad is refused: the slice spacing varies from 1\.5 to 3\.5 mm")


def test_a_missing_slice_is_refused(tmp_path, stored):
    positions = OBLIQUE.slice_positions(8)
    geometry = SeriesGeometry(
        row_cosine=OBLIQUE.row_cosine,
        column_cosine=OBLIQUE.column_cosine,
        positions=tuple(positions[:3] + positions[4:]),
    )
    refused(tmp_path, geometry, stored, r"slice spacing varies from 2\.5 to 5 mm \(missing slices")


def test_gantry_tilt_is_refused(tmp_path, stored):
    tilt = np.deg2rad(12.0)
    positions = tuple(
        tuple(np.array([0.0, 0.0, 0.0]) + k * 2.5 * np.array([0.0, np.sin(tilt), np.cos(tilt)])) for k in range(7)
    )
    refused(tmp_path, SeriesGeometry(positions=positions), stored, r"stacked 12\.0° off their normal \(gantry tilt\)")


def test_two_slices_at_one_position_are_refused(tmp_path, stored):
    positions = SeriesGeometry().slice_positions(7)
    positions[5] = positions[4]
    refused(tmp_path, SeriesGeometry(positions=tuple(positions)), stored, r"2 slices share a position")


def test_a_folder_with_two_series_is_refused_naming_them(tmp_path, stored):
    write_ct_series(tmp_path / "mixed", stored, OBLIQUE, shuffle_seed=None)
    for path in write_ct_series(tmp_path / "other", stored[:3], SeriesGeometry(), shuffle_seed=None):
        path.rename(tmp_path / "mixed" / f"other-{path.name}")
    with pytest.raises(VolumeFileError, match=r"mixed holds 2 DICOM series \(CT #1: 7 files; CT #1: 3 files\)"):
        read_volume(tmp_path / "mixed")
    assert read_volume(tmp_path / "mixed" / "other-IM0000").array.shape == (3, 10, 12)


def test_mixed_orientations_in_one_series_are_refused(tmp_path, stored):
    paths = write_ct_series(tmp_path / "bad", stored, SeriesGeometry(), shuffle_seed=None)
    localizer = pydicom.dcmread(paths[0])
    localizer.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    localizer.save_as(paths[0])
    with pytest.raises(VolumeFileError, match="the slices have 2 different orientations"):
        read_volume(tmp_path / "bad")


def test_a_single_slice_is_not_a_volume(tmp_path, stored):
    write_ct_series(tmp_path / "one", stored[:1], SeriesGeometry())
    with pytest.raises(VolumeFileError, match="has 1 slice: a single image is not a volume"):
        read_volume(tmp_path / "one")


def test_a_folder_without_dicom_is_not_taken_for_a_series(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(VolumeFileError, match="cannot read"):
        read_volume(tmp_path)


def test_a_parametric_map_reads_back_with_highdicom_on_the_sources_frame_of_reference(tmp_path, stored):
    import highdicom as hd

    from napari_vitcam.volumes import write_heatmap

    paths = write_ct_series(tmp_path / "ct", stored, OBLIQUE, slope=2.0, intercept=-1000.0)
    volume = read_volume(tmp_path / "ct")
    heatmap = np.random.default_rng(5).random(volume.array.shape).astype(np.float32)
    provenance = {"method": "gradcam", "class_name": "lesion"}
    out = write_heatmap(tmp_path / "heat.dcm", heatmap, affine=volume.affine, provenance=provenance, source=volume)
    source = pydicom.dcmread(paths[0])
    image = hd.imread(out)
    assert image.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert image.StudyInstanceUID == source.StudyInstanceUID and image.SeriesInstanceUID != source.SeriesInstanceUID
    assert image.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert "FloatPixelData" in image and image.ContentDescription == "gradcam lesion"
    mapping = image.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeMeaning == "Class activation map"
    back = image.get_volume(dtype=np.float32)
    np.testing.assert_allclose(back.affine, volume.metadata["affine_lps"], atol=1e-5)
    np.testing.assert_allclose(back.array, heatmap)
    reread = read_volume(out)  # and this package's reader places it on the scan
    np.testing.assert_allclose(reread.affine, volume.affine, atol=1e-5)
    np.testing.assert_allclose(reread.array, heatmap)


def test_a_parametric_map_needs_a_dicom_source(tmp_path):
    from napari_vitcam.volumes import check_output

    np.save(tmp_path / "scan.npy", np.zeros((2, 3, 4), np.float32))
    with pytest.raises(VolumeFileError, match=r"written only for a DICOM series: save the heatmap as \.nii\.gz"):
        check_output(tmp_path / "heat.dcm", source=read_volume(tmp_path / "scan.npy"))
