"""One registry of volume formats: which reader and writer a path gets, and the messages when none fits."""

import subprocess
import sys

import numpy as np
import pytest

from napari_vitcam.volumes import READERS, WRITERS, VolumeFileError, read_volume, reader_for, writer_for
from napari_vitcam.volumes.base import path_suffix


def test_every_format_has_a_unique_name_and_lower_case_suffixes():
    for registry in (READERS, WRITERS):
        names = [entry.name for entry in registry]
        assert len(names) == len(set(names))
        for entry in registry:
            assert all(s.startswith(".") and s == s.lower() for s in entry.suffixes)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a.npy", "npy"), ("a.NPZ", "npz"), ("scan.nii", "nifti"), ("scan.nii.gz", "nifti"), ("x.tar.gz", None)],
)
def test_suffixes_are_matched_whole_and_case_insensitively(tmp_path, name, expected):
    (tmp_path / name).write_bytes(b"")
    found = [r.name for r in READERS if r.can_read(tmp_path / name)]
    assert found[:1] == ([expected] if expected else [])


def test_longest_suffix_wins():
    assert path_suffix("heat.nii.gz", (".gz", ".nii.gz")) == ".nii.gz"
    assert path_suffix(".nii", (".nii",)) is None  # a hidden file named like a suffix has no stem


def test_unknown_and_missing_files_are_refused_in_one_line(tmp_path):
    (tmp_path / "scan.tif").write_bytes(b"II*\x00")
    with pytest.raises(VolumeFileError, match=r"cannot read scan\.tif: give one of NumPy \(\.npy\).*NIfTI.*DICOM"):
        reader_for(tmp_path / "scan.tif")
    with pytest.raises(VolumeFileError, match="does not exist"):
        read_volume(tmp_path / "nothing.npy")


def test_writers_are_chosen_by_suffix_and_unknown_suffixes_list_the_choices(tmp_path):
    assert writer_for(tmp_path / "h.npy").name == "npy"
    assert writer_for(tmp_path / "h.nii.gz").name == writer_for(tmp_path / "h.NII").name == "nifti"
    with pytest.raises(VolumeFileError, match=r"cannot write a heatmap as x\.out: end the file name with one of \.npy"):
        writer_for(tmp_path / "x.out")


def test_a_missing_optional_package_is_a_one_line_install_hint(tmp_path):
    np.save(tmp_path / "scan.npy", np.zeros((2, 2, 2)))
    (tmp_path / "scan.nii").write_bytes(b"\x00" * 400)
    code = (
        "import sys; sys.modules['nibabel'] = None\n"
        "from pathlib import Path\n"
        "from napari_vitcam.volumes import read_volume\n"
        "from napari_vitcam.core.errors import MissingExtraError\n"
        f"print(read_volume(Path({str(tmp_path / 'scan.npy')!r})).format)\n"
        "try:\n"
        f"    read_volume(Path({str(tmp_path / 'scan.nii')!r}))\n"
        "except MissingExtraError as error:\n"
        "    print('MISSING', error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "npy",
        "MISSING reading and writing NIfTI files needs nibabel, which is not installed: "
        "pip install 'napari-vitcam[radiology]'",
    ]
