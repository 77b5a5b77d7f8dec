"""Heatmap files: checked before any work, never over an input or an existing file, written atomically."""

import os
import stat

import numpy as np
import pytest

from napari_vitcam.volumes import VolumeFileError, check_output, write_heatmap


@pytest.fixture
def scan(tmp_path):
    path = tmp_path / "scan.npy"
    np.save(path, np.ones((2, 3, 4), np.float32))
    return path


def test_the_input_itself_is_refused_also_through_a_link_or_another_spelling(tmp_path, scan):
    os.symlink(scan, tmp_path / "link.npy")
    os.link(scan, tmp_path / "hard.npy")
    for output in (scan, tmp_path / "link.npy", tmp_path / "hard.npy", tmp_path / "sub" / ".." / "scan.npy"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(VolumeFileError, match=r"is the input scan\.npy: choose another output file"):
            check_output(output, inputs=[scan], force=True)


def test_a_file_of_an_input_series_folder_is_refused(tmp_path):
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "IM1.nii").write_bytes(b"x")
    with pytest.raises(VolumeFileError, match=r"is the input IM1\.nii"):
        check_output(tmp_path / "series" / "IM1.nii", inputs=[tmp_path / "series"], force=True)
    with pytest.raises(VolumeFileError, match=r"cannot write a heatmap as series"):
        check_output(tmp_path / "series", inputs=[tmp_path / "series"], force=True)


def test_existing_outputs_need_force_and_folders_never_do(tmp_path, scan):
    (tmp_path / "old.npy").write_bytes(b"keep")
    with pytest.raises(VolumeFileError, match=r"old\.npy exists: choose another output or pass --force"):
        check_output(tmp_path / "old.npy", inputs=[scan])
    assert check_output(tmp_path / "old.npy", inputs=[scan], force=True).name == "npy"
    (tmp_path / "dir.npy").mkdir()
    with pytest.raises(VolumeFileError, match="is a folder"):
        check_output(tmp_path / "dir.npy", force=True)


def test_a_missing_folder_and_an_unknown_suffix_are_refused(tmp_path):
    with pytest.raises(VolumeFileError, match=r"the folder .*nowhere does not exist"):
        check_output(tmp_path / "nowhere" / "heat.npy")
    with pytest.raises(VolumeFileError, match=r"cannot write a heatmap as heat\.out"):
        check_output(tmp_path / "heat.out")


def test_a_file_where_the_folder_should_be_is_named_as_a_file(tmp_path):
    (tmp_path / "scan.npy").write_bytes(b"a scan")
    with pytest.raises(VolumeFileError, match=r"scan.npy is a file, not a folder: choose another output"):
        check_output(tmp_path / "scan.npy" / "heat.npy")
    assert (tmp_path / "scan.npy").read_bytes() == b"a scan"


def test_the_named_file_is_written_exactly_with_ordinary_permissions(tmp_path):
    heatmap = np.random.default_rng(0).random((2, 3, 4)).astype(np.float32)
    written = write_heatmap(tmp_path / "heat.npy", heatmap, affine=None, provenance={})
    assert written == tmp_path / "heat.npy" and os.listdir(tmp_path) == ["heat.npy"]
    np.testing.assert_array_equal(np.load(written), heatmap)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(written).st_mode) == 0o666 & ~mask


def test_a_file_that_appeared_meanwhile_is_not_replaced_without_force(tmp_path):
    (tmp_path / "heat.npy").write_bytes(b"someone else's")
    with pytest.raises(VolumeFileError, match="exists"):
        write_heatmap(tmp_path / "heat.npy", np.zeros((2, 2, 2), np.float32), affine=None, provenance={})
    assert (tmp_path / "heat.npy").read_bytes() == b"someone else's" and os.listdir(tmp_path) == ["heat.npy"]
    write_heatmap(tmp_path / "heat.npy", np.zeros((2, 2, 2), np.float32), affine=None, provenance={}, force=True)
    assert np.load(tmp_path / "heat.npy").shape == (2, 2, 2)


def test_a_failed_write_leaves_nothing_behind_and_the_old_file_intact(tmp_path):
    (tmp_path / "heat.npy").write_bytes(b"previous")
    with pytest.raises(ValueError):
        write_heatmap(tmp_path / "heat.npy", np.array(["not", "numbers"]), affine=None, provenance={}, force=True)
    assert os.listdir(tmp_path) == ["heat.npy"] and (tmp_path / "heat.npy").read_bytes() == b"previous"
