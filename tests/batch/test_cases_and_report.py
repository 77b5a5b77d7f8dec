"""Finding the cases (folder, glob, CSV), the ledger's atomic files, the PNG thumbnails and the HTML report."""

from __future__ import annotations

import base64
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from tests.batch.cohort import Cohort

from napari_vitcam.batch import find_cases, run_batch
from napari_vitcam.batch.ledger import atomic_write, file_digest
from napari_vitcam.batch.report import encode_png, overlay, thumbnail
from napari_vitcam.core.errors import InputError


def decode_png(data: bytes) -> np.ndarray:
    """A minimal reader for the encoder's output (8-bit RGB, filter 0), checking every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks = 8, {}
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind, body = data[position + 4 : position + 8], data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks[kind] = body
        position += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 2)
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, 1 + 3 * width)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(height, width, 3)


def test_a_png_decodes_to_the_pixels_encoded():
    image = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(encode_png(image)), image)


def test_the_overlay_shows_the_scan_in_grey_and_the_heat_in_colour():
    scan = np.tile(np.linspace(0, 100, 8), (8, 1))
    heat = np.zeros((8, 8))
    heat[2, 2] = 1.0
    rgb = overlay(scan, heat, size=16).astype(int)
    assert rgb.shape == (16, 16, 3)
    cold = rgb[::2, ::2][heat == 0]
    assert (cold[:, 0] == cold[:, 1]).all() and (cold[:, 1] == cold[:, 2]).all()  # grey where there is no heat
    hot = rgb[4, 4]
    assert hot[0] > hot[2]  # warm colour at the hot pixel


def test_the_thumbnail_adds_the_slice_of_the_peak_when_it_is_not_the_middle():
    scan = np.random.default_rng(1).normal(size=(9, 12, 10))
    heat = np.zeros((9, 12, 10))
    heat[4, 6, 5] = 1.0  # the middle slice
    alone = decode_png(thumbnail(scan, heat))
    heat[4, 6, 5], heat[7, 2, 2] = 0.5, 1.0
    both = decode_png(thumbnail(scan, heat))
    assert alone.shape[1] == alone.shape[0] * 10 // 12
    assert both.shape == (alone.shape[0], 2 * alone.shape[1] + 4, 3)
    np.testing.assert_array_equal(both[:, alone.shape[1] : alone.shape[1] + 4], 255)  # the white gap


def test_cases_from_a_folder_a_glob_and_a_csv(cohort: Cohort):
    in_folder = find_cases(cohort.scans)
    assert sorted(Path(c.path).name for c in in_folder) == [
        "broken.nii.gz",
        "scan0.npy",
        "scan1.npy",
        "scan2.npy",
        "scan3.nii.gz",
    ]
    assert [c.name for c in find_cases(str(cohort.scans / "*.npy"))] == ["scan0", "scan1", "scan2"]
    from_csv = find_cases(cohort.table)
    assert [c.name for c in from_csv] == ["scan0", "scan1", "scan2", "scan3"]
    assert all(c.mask and Path(c.mask).is_file() and c.label in ("0", "1") for c in from_csv)
    assert [c.id for c in find_cases(cohort.scans)] == [c.id for c in in_folder]  # stable ids
    with pytest.raises(InputError, match="more than once"):
        find_cases([cohort.scans / "scan0.npy", cohort.scans / "scan0.npy"])
    empty = cohort.root / "empty.csv"
    empty.write_text("path,label\n")
    with pytest.raises(InputError, match="lists no scans"):
        find_cases(empty)


def test_atomic_writes_replace_whole_files_and_leave_no_temporary(tmp_path: Path):
    target = tmp_path / "record.json"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]
    other = tmp_path / "other.json"
    atomic_write(other, b"two")
    assert file_digest([target]) == file_digest([other])


class ReportParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self.images: list[str] = []
        self.headers: list[str] = []
        self.scripts = 0
        self._in_body = self._in_th = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag == "img" and self._in_body:
            self.images.append(attributes["src"])
            self.rows[-1].append("IMG")
        elif tag == "th":
            self._in_th = True
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag):
        self._in_th = self._in_th and tag != "th"

    def handle_data(self, data):
        if self._in_th:
            self.headers.append(data)
        elif self._in_body and self.rows and data.strip():
            self.rows[-1].append(data.strip())


def test_the_report_shows_every_case_with_its_slice(cohort: Cohort, dask_client):
    out = cohort.root / "out"
    with_corrupt = cohort.root / "with_corrupt.csv"
    with_corrupt.write_text(cohort.table.read_text() + "scans/broken.nii.gz,,\n")
    run = run_batch(cohort.checkpoint, with_corrupt, out, client=dask_client, device="cpu")
    parser = ReportParser()
    parser.feed((out / "report.html").read_text())
    assert len(parser.rows) == 5
    assert len(parser.images) == 4  # every explained case; the corrupt file has its error instead
    for src in parser.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        image = decode_png(base64.b64decode(src[len(prefix) :]))
        assert image.shape[2] == 3 and min(image.shape[:2]) >= 16
    assert any("broken.nii.gz" in cell for row in parser.rows for cell in row)
    assert {"case", "predicted", "iou", "error"} <= set(parser.headers) and parser.scripts == 1
    assert run.report == out / "report.html"


def test_a_pattern_leaves_out_the_heatmaps_an_earlier_run_wrote(cohort: Cohort):
    out = cohort.root / "out"
    (out / "heatmaps").mkdir(parents=True)
    np.save(out / "heatmaps" / "scan0.heatmap.npy", np.zeros((4, 4, 4), np.float32))
    found = find_cases(str(cohort.root / "**" / "*.npy"), outdir=out)
    assert not any("heatmap" in c.path for c in found)
    assert {Path(c.path).name for c in found} >= {"scan0.npy", "scan1.npy", "scan2.npy"}
    with pytest.raises(InputError, match="is inside the output folder"):
        find_cases(cohort.scans, outdir=cohort.root)
