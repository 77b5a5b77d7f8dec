"""Measurement helpers for the benchmarks: timing, peak placement, memory, the table.

Nothing here is part of the package; ``benchmarks/run.py`` and the tests use it.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

# --------------------------------------------------------------------------- timing


def time_call(fn: Callable[[], object], sync: Callable[[], None] | None = None) -> float:
    """Seconds one call of ``fn`` takes (``sync`` runs before the clock stops: CUDA)."""
    start = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - start


def interleaved(
    variants: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Time every variant once per round, rotating the order each round.

    Interleaving keeps slow drifts of the machine's load (other processes) from
    landing on one variant only; compare variants round by round
    (:func:`round_ratios`) or by medians.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            time_call(variants[name], sync)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_call(variants[name], sync))
    return times


def round_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """``numerator[i] / denominator[i]`` for each round."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError("need the same, non-zero number of rounds for both")
    return [n / d for n, d in zip(numerator, denominator, strict=False)]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


@dataclass(frozen=True)
class Ratio:
    """A ratio measured round by round: its median and range."""

    median: float
    low: float
    high: float
    rounds: int

    @classmethod
    def of(cls, numerator: Sequence[float], denominator: Sequence[float]) -> Ratio:
        ratios = round_ratios(numerator, denominator)
        return cls(median(ratios), min(ratios), max(ratios), len(ratios))

    def text(self, digits: int = 2, suffix: str = "") -> str:
        if self.rounds == 1:
            return f"{self.median:.{digits}f}{suffix}"
        return f"{self.median:.{digits}f}{suffix} (range {self.low:.{digits}f}-{self.high:.{digits}f}, {self.rounds} rounds)"


# --------------------------------------------------------------- where a peak lands


def peak_centroid(volume: np.ndarray, rtol: float = 1e-5) -> np.ndarray:
    """Voxel-index centroid of the maximum's plateau (voxels within ``rtol`` of the max).

    A map whose maximum is shared by several voxels (a filled patch, or the two
    voxels either side of a patch centre) peaks at their centroid.
    """
    volume = np.asarray(volume)
    top = float(volume.max())
    if not top > 0:
        raise ValueError("the map has no positive maximum")
    return np.argwhere(volume >= top * (1.0 - rtol)).mean(axis=0)


def patch_centre(
    token: Sequence[int],
    cell: Sequence[float],
    input_shape: Sequence[int],
    out_shape: Sequence[int],
) -> np.ndarray:
    """The centre of ``token``'s patch in voxel-index coordinates of an ``out_shape`` map.

    Input voxel ``k`` spans ``[k, k + 1)``, the patch centre is at
    ``(i + 0.5) * cell``; output voxel ``u`` (of ``n_out`` spanning the input's
    ``n_in``) has its centre at ``(u + 0.5) * n_in / n_out``.
    """
    return np.array(
        [(i + 0.5) * c * o / n - 0.5 for i, c, n, o in zip(token, cell, input_shape, out_shape, strict=False)],
        dtype=np.float64,
    )


def peak_offset(
    volume: np.ndarray,
    token: Sequence[int],
    cell: Sequence[float],
    input_shape: Sequence[int] | None = None,
) -> float:
    """Distance in voxels from the peak of a one-hot token's map to its patch centre."""
    volume = np.asarray(volume)
    input_shape = volume.shape if input_shape is None else input_shape
    centre = patch_centre(token, cell, input_shape, volume.shape)
    return float(np.linalg.norm(peak_centroid(volume) - centre))


def hot_token_map(grid_shape: Sequence[int], token: Sequence[int]) -> np.ndarray:
    """A float32 token map of zeros with a single 1 at ``token``."""
    tokens = np.zeros(tuple(grid_shape), dtype=np.float32)
    tokens[tuple(token)] = 1.0
    return tokens


def zoom_to(token_map: np.ndarray, out_shape: Sequence[int], order: int = 3) -> np.ndarray:
    """``scipy.ndimage.zoom`` of a 3D map to ``out_shape`` with its default grid (corners aligned)."""
    from scipy import ndimage

    factors = [o / n for o, n in zip(out_shape, token_map.shape, strict=False)]
    out = ndimage.zoom(token_map, factors, order=order)
    if out.shape != tuple(out_shape):  # zoom rounds the output size
        raise ValueError(f"zoom gave {out.shape}, expected {tuple(out_shape)}")
    return out


# ------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss() -> int:
    """This process's resident memory now, in bytes."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # no /proc and no psutil: the peak so far is the best we have
        return peak_rss()


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-memory high-water mark (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """The process's resident-memory high-water mark, in bytes (since the last reset, on Linux)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    import resource
    import sys

    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value if sys.platform == "darwin" else value * 1024)


def total_memory() -> int | None:
    """Physical memory of the machine, in bytes."""
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        return None


# ----------------------------------------------------------------------- formatting


def fmt_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_bytes(count: float) -> str:
    sign = "-" if count < 0 else ""
    count = abs(float(count))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{sign}{count:.0f} {unit}" if unit == "B" else f"{sign}{count:.2f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def shape_text(shape: Sequence[int]) -> str:
    shape = tuple(int(s) for s in shape)
    if len(set(shape)) == 1:
        return f"{shape[0]}^3"
    return "x".join(str(s) for s in shape)


@dataclass(frozen=True)
class Row:
    """One line of the benchmark table.

    ``met`` is True/False against ``target``, or None where there is no target
    or nothing was measured.
    """

    row: str
    benchmark: str
    case: str
    result: str
    target: str = "-"
    met: bool | None = None
    details: str = ""

    @property
    def met_text(self) -> str:
        return {True: "yes", False: "**no**", None: "-"}[self.met]


COLUMNS = ("#", "benchmark", "case", "result", "target", "target met", "details")


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip() or " "


def format_table(rows: Sequence[Row]) -> str:
    """The rows as a GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in rows:
        cells = (r.row, r.benchmark, r.case, r.result, r.target, r.met_text, r.details)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


# -------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except (OSError, AttributeError):
        return "unknown"


def machine_description() -> dict[str, str]:
    """What the numbers were measured on."""
    import torch

    info = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "logical cores": str(os.cpu_count()),
    }
    try:
        import psutil

        info["physical cores"] = str(psutil.cpu_count(logical=False))
    except ImportError:
        pass
    memory = total_memory()
    info["memory"] = fmt_bytes(memory) if memory else "unknown"
    info["os"] = f"{platform.system()} {platform.release()}"
    info["python"] = platform.python_version()
    info["torch"] = (
        f"{torch.__version__} (intra-op threads {torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()})"
    )
    info["numpy"] = np.__version__
    try:
        import scipy

        info["scipy"] = scipy.__version__
    except ImportError:
        info["scipy"] = "not installed"
    if torch.cuda.is_available():
        info["gpu"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    else:
        info["gpu"] = "none (torch.cuda.is_available() is False)"
    info["load average (1/5/15 min) at start"] = load_average()
    return info


def format_machine(info: dict[str, str]) -> str:
    return "\n".join(f"- {key}: {value}" for key, value in info.items())
