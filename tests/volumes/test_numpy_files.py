"""NumPy volumes: read as stored, read-only, never unpickled; .npz arrays chosen by key."""

import numpy as np
import pytest

from napari_vitcam.volumes import VolumeFileError, read_volume


def test_npy_is_read_as_stored_read_only_and_without_geometry(tmp_path):
    volume = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    np.save(tmp_path / "scan.npy", volume)
    read = read_volume(tmp_path / "scan.npy")
    np.testing.assert_array_equal(read.array, volume)
    assert read.array.dtype == np.int16 and not read.array.flags.writeable
    assert read.affine is None and read.spacing is None and read.format == "npy"
    with pytest.raises(ValueError):
        read.array[0, 0, 0] = 1


def test_an_array_handed_to_a_volume_is_not_made_read_only_for_its_owner(tmp_path):
    from napari_vitcam.volumes import Volume

    mine = np.zeros((2, 2, 2), np.float32)
    volume = Volume(mine, None, tmp_path, "npy")
    assert mine.flags.writeable and not volume.array.flags.writeable


def test_npy_with_python_objects_is_refused_without_unpickling(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(VolumeFileError, match=r"objects\.npy holds Python objects, which are never unpickled"):
        read_volume(tmp_path / "objects.npy")


def test_corrupt_and_non_numeric_npy_are_refused_in_one_line(tmp_path):
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    with pytest.raises(VolumeFileError, match=r"broken\.npy is not a readable NumPy file") as info:
        read_volume(tmp_path / "broken.npy")
    assert "\n" not in str(info.value)
    np.save(tmp_path / "text.npy", np.array(["a", "b"]))
    with pytest.raises(VolumeFileError, match="holds <U1 values, not numbers"):
        read_volume(tmp_path / "text.npy")


def test_npz_with_one_array_is_taken_as_is(tmp_path):
    volume = np.ones((3, 4, 5), np.float32)
    np.savez(tmp_path / "one.npz", anything=volume)
    read = read_volume(tmp_path / "one.npz")
    np.testing.assert_array_equal(read.array, volume)
    assert read.metadata["key"] == "anything"


def test_npz_with_several_arrays_needs_a_key_and_the_message_lists_them(tmp_path):
    mask, scan = np.zeros((3, 4, 5), np.uint8), np.ones((3, 4, 5), np.float32)
    np.savez(tmp_path / "both.npz", mask=mask, scan=scan)
    with pytest.raises(VolumeFileError, match=r"both\.npz holds 2 arrays \(mask, scan\): choose the volume with --key"):
        read_volume(tmp_path / "both.npz")
    np.testing.assert_array_equal(read_volume(tmp_path / "both.npz", key="scan").array, scan)
    with pytest.raises(VolumeFileError, match="has no array 'lesion': choose one of mask, scan"):
        read_volume(tmp_path / "both.npz", key="lesion")


def test_empty_and_corrupt_npz_are_refused(tmp_path):
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(VolumeFileError, match=r"empty\.npz holds no arrays"):
        read_volume(tmp_path / "empty.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(VolumeFileError, match=r"broken\.npz is not a readable NumPy file"):
        read_volume(tmp_path / "broken.npz")


def test_a_key_for_a_single_array_file_is_refused(tmp_path):
    np.save(tmp_path / "scan.npy", np.zeros((2, 2, 2)))
    with pytest.raises(VolumeFileError, match=r"--key applies to \.npz files only"):
        read_volume(tmp_path / "scan.npy", key="scan")
