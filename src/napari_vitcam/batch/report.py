"""The run's report: one self-contained HTML page, one row per case, the scan's middle axial slice under its heatmap.

Beside the middle slice, the axial slice through the heatmap's maximum (when
it is another one), so that a lesion away from the middle is seen too.

Thumbnails are PNG files made by the workers (numpy and zlib only: no plotting
package) and embedded in the page as base64, so ``report.html`` can be mailed
or archived on its own. Clicking a column header sorts the table (a few lines
of inline JavaScript; numbers sort as numbers).
"""

from __future__ import annotations

import base64
import html
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Longest side of a thumbnail, in pixels (small slices are enlarged by whole pixels).
THUMBNAIL_SIZE = 192

# A perceptually ordered colour ramp (dark purple, red, orange, light yellow: like "inferno"), for the heatmap.
_RAMP = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float64,
)


def encode_png(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB image (H, W, 3) as PNG bytes."""
    image = np.ascontiguousarray(rgb, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"an RGB image is (H, W, 3), not {image.shape}")
    height, width = image.shape[:2]
    rows = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, width * 3)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def _ramp(values: np.ndarray) -> np.ndarray:
    position = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    frac = (position - low)[..., None]
    return _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac


def overlay(scan_slice: np.ndarray, heat_slice: np.ndarray, *, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """The scan slice in grey (1st to 99th percentile) with the heatmap blended over it (opacity grows with heat).

    Args:
        scan_slice: 2D slice of the scan.
        heat_slice: the same slice of the heatmap, in [0, 1].
        size: the longest side of the result; slices are enlarged by a whole factor.

    Returns:
        (H, W, 3) uint8.
    """
    scan = np.asarray(scan_slice, dtype=np.float64)
    finite = scan[np.isfinite(scan)]
    low, high = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    grey = np.clip((np.nan_to_num(scan, nan=low) - low) / (high - low if high > low else 1.0), 0, 1)
    heat = np.clip(np.nan_to_num(np.asarray(heat_slice, dtype=np.float64)), 0, 1)
    alpha = (0.65 * heat)[..., None]
    rgb = (grey[..., None] * 255.0) * (1 - alpha) + _ramp(heat) * alpha
    factor = max(1, size // max(rgb.shape[:2]))
    rgb = np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)
    return np.round(rgb).clip(0, 255).astype(np.uint8)


def thumbnail(scan: np.ndarray, heatmap: np.ndarray) -> bytes:
    """PNG of the middle axial slice (along the first axis: the superior one for a scan in world order
    (S, P, L)) with its heatmap, and beside it, when the heatmap's maximum lies in another slice, that slice."""
    scan = np.asarray(scan)
    if scan.ndim == 4:  # (C, D, H, W): the first channel
        scan = scan[0]
    heat = np.asarray(heatmap)
    middle = scan.shape[0] // 2
    panels = [overlay(scan[middle], heat[middle])]
    peak = int(np.unravel_index(int(np.argmax(heat)), heat.shape)[0]) if heat.size else middle
    if peak != middle:
        gap = np.full((panels[0].shape[0], 4, 3), 255, dtype=np.uint8)
        panels += [gap, overlay(scan[peak], heat[peak])]
    return encode_png(np.concatenate(panels, axis=1))


_SCRIPT = """
document.querySelectorAll("th").forEach(function (th, column) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0];
    var ascending = th.dataset.order !== "asc";
    th.closest("tr").querySelectorAll("th").forEach(function (h) { delete h.dataset.order; });
    th.dataset.order = ascending ? "asc" : "desc";
    var rows = Array.from(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[column].dataset.sort, y = b.cells[column].dataset.sort;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return ascending ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; }
th { cursor: pointer; background: #eee; position: sticky; top: 0; }
th[data-order="asc"]::after { content: " \\25B2"; } th[data-order="desc"]::after { content: " \\25BC"; }
td, th { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; font-size: 0.9em; }
td.error { color: #a00; max-width: 30em; }
img { image-rendering: pixelated; }
"""


def _cell(value: Any, *, digits: int = 3) -> tuple[str, str]:
    """(shown text, sort key) of a value."""
    if value is None or value == "":
        return "", ""
    if isinstance(value, float):
        return f"{value:.{digits}f}", repr(value)
    return str(value), str(value)


def render_report(path: Path, rows: Sequence[dict[str, Any]], outdir: Path, *, title: str, summary: str) -> str:
    """The HTML text of the report (the caller writes it atomically).

    Args:
        path: where the page will be (relative links to heatmaps are made from there).
        rows: the results table's rows (``thumbnail`` and ``heatmap`` relative to ``outdir``).
        outdir: the batch's output folder.
        title: the page's title.
        summary: one line shown above the table.
    """
    metric_names = ["pointing_strict", "pointing_tolerant", "peak_distance", "energy", "iou"]
    show_metrics = any(row.get(name) is not None for row in rows for name in metric_names)
    columns = [
        "case",
        "axial slices: middle, peak",
        "status",
        "label",
        "predicted",
        "p(predicted)",
        "explained_class",
        "raw_max",
    ]
    columns += metric_names if show_metrics else []
    columns += ["time_total_s", "error"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for column in columns:
            if column == "axial slices: middle, peak":
                image = ""
                thumb = row.get("thumbnail")
                if thumb and (Path(outdir) / thumb).is_file():
                    data = base64.b64encode((Path(outdir) / thumb).read_bytes()).decode("ascii")
                    alt = f"middle axial slice of {row.get('name')} (and the slice of the heatmap's maximum)"
                    alt = html.escape(alt, quote=True)
                    image = f'<img src="data:image/png;base64,{data}" alt="{alt}">'
                cells.append(f'<td data-sort="">{image}</td>')
                continue
            if column == "case":
                text, key = str(row.get("name") or ""), str(row.get("name") or "")
                heat = row.get("heatmap")
                shown = html.escape(text)
                if heat:
                    link = html.escape(str(Path(outdir, heat).relative_to(Path(path).parent)), quote=True)
                    shown = f'<a href="{link}">{shown}</a>'
                cells.append(
                    f'<td data-sort="{html.escape(key, quote=True)}" title="{html.escape(str(row.get("path")), quote=True)}">{shown}</td>'
                )
                continue
            value = row.get("probability") if column == "p(predicted)" else row.get(column)
            text, key = _cell(value)
            css = ' class="error"' if column == "error" and text else ""
            cells.append(f'<td{css} data-sort="{html.escape(key, quote=True)}">{html.escape(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table>"
        f"<script>{_SCRIPT}</script></body></html>\n"
    )
