"""napari-vitcam benchmarks: one command, one markdown table, every row measured in this run.

    python benchmarks/run.py [--quick] [--rows 1,2,3,4] [--device auto|cpu|cuda] [--threads N]

Rows:

1. Overhead of ``grad_cam`` (voxel map included) over a plain forward plus
   backward (``model(x)[:, c].sum().backward()``, parameters requiring grad) of
   the same model and input.
2. ``tokens_to_voxels`` against ``scipy.ndimage.zoom(order=3)``: speed, and
   where a single hot token's peak lands relative to its patch centre.
3. ``explain_volume`` end to end, numpy volume to heatmap, one fresh process
   per case so that peak memory does not mix.
4. The GUI's longest event-loop stall during a widget run (needs a display:
   ``xvfb-run -a python benchmarks/run.py --rows 4``).

The table goes to stdout, progress to stderr. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks.measure import (
    Ratio,
    Row,
    current_rss,
    fmt_bytes,
    fmt_seconds,
    format_machine,
    format_table,
    hot_token_map,
    interleaved,
    load_average,
    machine_description,
    median,
    peak_offset,
    peak_rss,
    reset_peak_rss,
    shape_text,
    time_call,
    total_memory,
    zoom_to,
)

Triple = tuple[int, int, int]

OVERHEAD_TARGET = 1.10
SPEEDUP_TARGET = 20.0

# The demo ViT when the shipped checkpoint is absent (timing does not need trained weights).
STAND_IN_DEMO = {"img_size": 64, "patch_size": 8, "width": 96, "depth": 4, "heads": 4, "num_classes": 2}
VIT_B_LIKE = {"img_size": 128, "patch_size": 16, "width": 768, "depth": 12, "heads": 12, "num_classes": 2}
VOXEL_MAP_CASES: tuple[tuple[Triple, Triple], ...] = (
    ((8, 8, 8), (128, 128, 128)),
    ((6, 14, 14), (96, 224, 224)),
    ((12, 16, 16), (192, 256, 256)),
)
E2E_SHAPES: tuple[Triple, ...] = ((64, 64, 64), (256, 256, 256), (512, 512, 256))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def synchronizer(device: torch.device) -> Callable[[], None] | None:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return None


# ---------------------------------------------------------------------- models


def demo_checkpoint_path() -> Path:
    from napari_vitcam.demo.shipped import SHIPPED_CHECKPOINT

    return SHIPPED_CHECKPOINT


@dataclass(frozen=True)
class ModelSource:
    """A model to benchmark: a checkpoint file, or a :class:`ViTConfig` with random weights."""

    label: str
    config: dict = field(default_factory=dict)
    checkpoint: str | None = None

    def load(self):
        """A :class:`LoadedModel` on the CPU."""
        from napari_vitcam.models.architectures.vit3d import ViT3D, ViTConfig
        from napari_vitcam.models.loaded_model import LoadedModel
        from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization

        if self.checkpoint is not None:
            from napari_vitcam import load_checkpoint  # type: ignore[attr-defined]

            return load_checkpoint(self.checkpoint)
        torch.manual_seed(0)
        config = ViTConfig(**self.config)
        model = ViT3D(config)
        spec = ModelSpec(
            InputSpec(config.in_channels, config.img_size, Normalization("zscore")),
            tuple(f"class {i}" for i in range(config.num_classes)),
            target_layer=f"blocks.{config.depth - 1}.norm1",
        )
        return LoadedModel(model, spec)


def describe_vit(config) -> str:
    return (
        f"width {config.width}, depth {config.depth}, heads {config.heads}, "
        f"patch {shape_text(config.patch_size)}, input {shape_text(config.img_size)}"
    )


def demo_source() -> ModelSource:
    """The shipped demo checkpoint when present and loadable, otherwise the stand-in config."""
    from napari_vitcam.models.architectures.vit3d import ViTConfig

    path = demo_checkpoint_path()
    why = "no shipped checkpoint"
    if path.exists():
        source = ModelSource("", checkpoint=str(path))
        try:
            loaded = source.load()
            config = getattr(loaded.model, "config", None)
            shape = loaded.spec.input.spatial_size
            summary = describe_vit(config) if config is not None else f"input {shape_text(shape)}"
            return ModelSource(f"demo ViT, shipped checkpoint ({summary})", checkpoint=str(path))
        except Exception as error:  # a broken checkpoint should not stop the benchmarks
            why = f"shipped checkpoint not loadable: {type(error).__name__}: {error}"
    return ModelSource(f"demo ViT, stand-in config ({describe_vit(ViTConfig(**STAND_IN_DEMO))}; {why})", STAND_IN_DEMO)


def vit_b_source() -> ModelSource:
    from napari_vitcam.models.architectures.vit3d import ViTConfig

    return ModelSource(f"ViT-B-like ({describe_vit(ViTConfig(**VIT_B_LIKE))})", VIT_B_LIKE)


# ---------------------------------------------------------------- row 1: overhead


def overhead_rows(sources: Sequence[ModelSource], rounds: int, device: torch.device) -> list[Row]:
    """grad_cam (voxel map included) / plain forward+backward, for the recommended and the first block."""
    from napari_vitcam.engine.cam import grad_cam

    rows = []
    for source in sources:
        log(f"row 1: {source.label}")
        loaded = source.load()
        model = loaded.model.to(device).eval()
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        spec = loaded.spec.input
        x = torch.randn(1, spec.channels, *spec.spatial_size, generator=torch.Generator().manual_seed(0)).to(device)
        depth = len(model.blocks)
        targets = [loaded.spec.target_layer or f"blocks.{depth - 1}.norm1"]
        if "blocks.0.norm1" not in targets:
            targets.append("blocks.0.norm1")
        stages: dict[str, list[dict[str, float]]] = {t: [] for t in targets}

        def forward_backward(model: torch.nn.Module = model, x: torch.Tensor = x) -> None:
            for parameter in model.parameters():
                parameter.grad = None
            model(x)[:, 0].sum().backward()

        def explain(
            target: str, model: torch.nn.Module = model, x: torch.Tensor = x, stages: dict = stages
        ) -> Callable[[], None]:
            def run() -> None:
                stages[target].append(grad_cam(model, x, target, 0).timings)

            return run

        variants = {"baseline": forward_backward} | {t: explain(t) for t in targets}
        times = interleaved(variants, rounds, warmup=1, sync=synchronizer(device))
        base = median(times["baseline"])
        for target in targets:
            ratio = Ratio.of(times[target], times["baseline"])
            t = {k: median([s[k] for s in stages[target]]) for k in stages[target][0]}
            rows.append(
                Row(
                    "1",
                    "overhead: grad_cam incl. voxel map / forward+backward",
                    f"{source.label}; {shape_text(spec.spatial_size)} on {device.type}; target {target}"
                    + (" (recommended)" if target == targets[0] else ""),
                    ratio.text(),
                    f"<= {OVERHEAD_TARGET:.2f}",
                    ratio.median <= OVERHEAD_TARGET,
                    f"grad_cam {fmt_seconds(median(times[target]))} (medians: forward {fmt_seconds(t['forward'])}, "
                    f"backward {fmt_seconds(t['backward'])}, token map {fmt_seconds(t['map'])}, "
                    f"voxel map {fmt_seconds(t['upsample'])}); forward+backward {fmt_seconds(base)}",
                )
            )
        del model, loaded, x
        gc.collect()
    return rows


# ------------------------------------------------------------ row 2: voxel mapping


def hot_token_offsets(grid_shape: Triple, out_shape: Triple, token: Triple, device: torch.device) -> dict[str, float]:
    """Peak-to-patch-centre distance (voxels) of a one-hot token map, for each method."""
    from napari_vitcam.engine.token_grid import TokenGrid
    from napari_vitcam.engine.voxel_map import tokens_to_voxels

    cell = tuple(o / g for o, g in zip(out_shape, grid_shape, strict=False))
    grid = TokenGrid(tuple(grid_shape), cell, tuple(out_shape))
    hot = hot_token_map(grid_shape, token)
    tokens = torch.from_numpy(hot)[None].to(device)
    offsets = {}
    for mode in ("smooth", "patch"):
        voxels = tokens_to_voxels(tokens, grid, mode=mode)[0].cpu().numpy()
        offsets[mode] = peak_offset(voxels, token, cell)
    offsets["zoom"] = peak_offset(zoom_to(hot, out_shape), token, cell)
    return offsets


def voxel_map_rows(cases: Sequence[tuple[Triple, Triple]], rounds: int, device: torch.device) -> list[Row]:
    """tokens_to_voxels ("smooth", "patch") on ``device`` against scipy zoom(order=3) on the CPU."""
    from napari_vitcam.engine.token_grid import TokenGrid
    from napari_vitcam.engine.voxel_map import tokens_to_voxels

    rows = []
    for grid_shape, out_shape in cases:
        log(f"row 2: {shape_text(grid_shape)} -> {shape_text(out_shape)}")
        cell = tuple(o / g for o, g in zip(out_shape, grid_shape, strict=False))
        grid = TokenGrid(tuple(grid_shape), cell, tuple(out_shape))
        tokens = torch.rand(1, *grid_shape, generator=torch.Generator().manual_seed(0))
        on_device = tokens.to(device)
        as_numpy = tokens[0].numpy()
        variants = {
            "smooth": partial(tokens_to_voxels, on_device, grid, mode="smooth"),
            "patch": partial(tokens_to_voxels, on_device, grid, mode="patch"),
            "zoom": partial(zoom_to, as_numpy, out_shape),
        }
        times = interleaved(variants, rounds, warmup=1, sync=synchronizer(device))
        # an interior token at the centre and one next to the corner (zoom's error grows
        # towards the border); a border token is not used: there both methods hold the
        # value out to the edge, so its plateau has no single centre
        hot_tokens = sorted({tuple(g // 2 for g in grid_shape), tuple(min(1, g - 1) for g in grid_shape)}, reverse=True)
        offsets = {token: hot_token_offsets(grid_shape, out_shape, token, device) for token in hot_tokens}
        for mode in ("smooth", "patch"):
            speed = Ratio.of(times["zoom"], times[mode])
            rows.append(
                Row(
                    "2",
                    "token map to voxels vs scipy zoom(order=3)",
                    f"{shape_text(grid_shape)} -> {shape_text(out_shape)}, {mode} on {device.type}",
                    speed.text(0, "x faster"),
                    f">= {SPEEDUP_TARGET:.0f}x",
                    speed.median >= SPEEDUP_TARGET,
                    f"{mode} {fmt_seconds(median(times[mode]))}, zoom {fmt_seconds(median(times['zoom']))}; "
                    "hot-token peak to patch centre (voxels): "
                    + "; ".join(
                        f"token {token}: {mode} {found[mode]:.2f}, zoom {found['zoom']:.2f}"
                        for token, found in offsets.items()
                    ),
                )
            )
    return rows


# -------------------------------------------------------------- row 3: end to end


def e2e_measure(job: dict) -> dict:
    """One end-to-end case, in this process: time and peak memory of ``explain_volume``.

    Run it in a fresh process (``--e2e-child``) so that peaks of earlier cases
    do not mix in.
    """
    from napari_vitcam.pipeline.explain import explain_volume

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    device = torch.device(job["device"])
    loaded = ModelSource(**job["source"]).load()
    shape = tuple(job["shape"])
    volume = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    volume += 3.0  # a scan-like offset, so the z-score has work to do
    gc.collect()
    sync = synchronizer(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = current_rss()
    reset = reset_peak_rss()
    stages: list[dict[str, float]] = []

    def run():
        # only the timings are kept: one heatmap alive at a time, as in the viewer
        stages.append(dict(explain_volume(loaded, volume, device=device).timings))

    first = time_call(run, sync)
    warm = [time_call(run, sync) for _ in range(int(job["rounds"]))]
    warm_stages = stages[1:] or stages
    report = {
        "shape": list(shape),
        "device": str(device),
        "first_s": first,
        "warm_s": warm,
        "timings": {k: median([s[k] for s in warm_stages]) for k in warm_stages[0]},
        "volume_bytes": int(volume.nbytes),
        "rss_before": rss_before,
        "rss_peak": peak_rss(),
        "peak_reset": reset,
    }
    if device.type == "cuda":
        report["cuda_max_allocated"] = int(torch.cuda.max_memory_allocated(device))
        report["gpu"] = torch.cuda.get_device_name(device)
    return report


def e2e_in_subprocess(job: dict, timeout: float = 1800.0) -> dict:
    return child_in_subprocess("--e2e-child", job, timeout)


def child_in_subprocess(flag: str, job: dict, timeout: float = 1800.0) -> dict:
    """Run this file with ``flag job`` in a fresh Python process; its last stdout line is the JSON report."""
    command = [sys.executable, str(Path(__file__).resolve()), flag, json.dumps(job)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise RuntimeError(f"the benchmark process failed (exit {done.returncode}): {tail}")
    return json.loads(lines[-1])


def e2e_row(report: dict, source: ModelSource, ram: int | None) -> Row:
    device = report["device"]
    stages = ", ".join(f"{k} {fmt_seconds(v)}" for k, v in report["timings"].items())
    increment = report["rss_peak"] - report["rss_before"]
    volume = report["volume_bytes"]
    memory = (
        f"peak RSS {fmt_bytes(report['rss_peak'])}, +{fmt_bytes(increment)} over the process before the call "
        f"(volume {fmt_bytes(volume)}, model and imports loaded) = {increment / volume:.1f}x the volume"
    )
    if not report["peak_reset"]:
        memory += " (peak since process start: no peak reset on this OS)"
    fits = ram is None or report["rss_peak"] < ram
    if "cuda_max_allocated" in report:
        memory = f"CUDA max allocated {fmt_bytes(report['cuda_max_allocated'])} on {report['gpu']}; " + memory
    target = "fits in memory" + (f" ({fmt_bytes(ram)} RAM)" if ram else "")
    return Row(
        "3",
        "explain_volume end to end",
        f"{shape_text(report['shape'])} float32 volume on {device.split(':')[0]}; {source.label}",
        f"{fmt_seconds(median(report['warm_s']))} (first call {fmt_seconds(report['first_s'])})",
        target,
        fits,
        f"{memory}; stage medians: {stages}",
    )


def e2e_rows(
    source: ModelSource,
    shapes: Sequence[Triple],
    devices: Sequence[str],
    rounds: int,
    skipped: dict[str, str] | None = None,
    threads: int | None = None,
) -> list[Row]:
    """One row per (device, shape), each measured in a fresh process; ``skipped`` device -> reason."""
    rows = []
    ram = total_memory()
    for device, why in (skipped or {}).items():
        for shape in shapes:
            rows.append(
                Row(
                    "3",
                    "explain_volume end to end",
                    f"{shape_text(shape)} float32 volume on {device}",
                    f"not measured: {why}",
                )
            )
    for device in devices:
        for shape in shapes:
            log(f"row 3: {shape_text(shape)} on {device}")
            job = {
                "source": asdict(source),
                "shape": list(shape),
                "device": device,
                "rounds": rounds,
                "threads": threads,
            }
            try:
                rows.append(e2e_row(e2e_in_subprocess(job), source, ram))
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                rows.append(
                    Row(
                        "3",
                        "explain_volume end to end",
                        f"{shape_text(shape)} float32 volume on {device}",
                        f"failed: {error}",
                        "fits in memory",
                        False,
                    )
                )
    return rows


# ----------------------------------------------------------------------- row 4: GUI

GUI_SHAPE: Triple = (256, 256, 256)
STALL_TARGET_MS = 100.0  # the budget tests/test_gui_stall.py holds the widget to
SETTLE_S = 1.0  # the new window draws itself for this long before the model is loaded
GUI_BENCHMARK = "GUI: longest event-loop stall"


def _has_display() -> bool:
    if os.environ.get("QT_QPA_PLATFORM", "").startswith(("offscreen", "minimal")):
        return True
    return sys.platform in ("win32", "darwin") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def gui_measure(job: dict) -> dict:
    """In this process: open a viewer with a volume, load the model in the widget, run it.

    The event loop runs under :func:`napari_vitcam.testing.stall.longest_stall`
    while the new window first draws itself (:data:`SETTLE_S`, napari's own
    start-up, reported apart), while the model loads and while the run goes
    on, until half a second after the heatmap layer is shown (so drawing it
    counts too).
    """
    import tempfile
    import time

    import napari

    from napari_vitcam._napari.recent import CONFIG_DIR_VARIABLE
    from napari_vitcam._napari.widget import VitcamWidget
    from napari_vitcam.testing.stall import longest_stall

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    loaded = ModelSource(**job["source"]).load()
    volume = np.random.default_rng(0).standard_normal(tuple(job["shape"]), dtype=np.float32)
    with tempfile.TemporaryDirectory() as config:
        os.environ[CONFIG_DIR_VARIABLE] = config  # leave the user's recent-checkpoint list alone
        viewer = napari.Viewer(show=True)
        try:
            viewer.add_image(volume, name="volume", contrast_limits=(-3.0, 3.0))
            widget = VitcamWidget(viewer)
            viewer.window.add_dock_widget(widget)
            # napari's own first draws of the new window, before any of ours: measured
            # apart, so that they do not count as a stall of loading the model.
            settle_until = time.perf_counter() + SETTLE_S
            startup = longest_stall(lambda: time.perf_counter() >= settle_until, timeout_s=SETTLE_S + 60)
            ready: list = []
            widget.load_finished.connect(ready.append)
            widget.use_model(loaded)
            load = longest_stall(lambda: bool(ready), timeout_s=float(job.get("timeout_s", 600)))
            if ready[0] is None:
                raise RuntimeError("the widget did not load the model")
            finished: list = []
            widget.run_finished.connect(finished.append)
            if not widget.run():
                raise RuntimeError("the widget did not start a run")
            settled: list[float] = []

            def done() -> bool:
                if not finished:
                    return False
                settled.append(time.perf_counter())
                return settled[-1] - settled[0] >= 0.5

            run = longest_stall(done, timeout_s=float(job.get("timeout_s", 600)))
            if finished[0] is None:
                raise RuntimeError("the run failed")
        finally:
            viewer.close()
    return {
        "shape": list(job["shape"]),
        "run_longest_s": run.longest_s,
        "run_duration_s": run.duration_s,
        "run_ticks": run.ticks,
        "interval_s": run.interval_s,
        "load_longest_s": load.longest_s,
        "startup_longest_s": startup.longest_s,
    }


def gui_row(report: dict, source: ModelSource) -> Row:
    stall_ms = 1000.0 * report["run_longest_s"]
    return Row(
        "4",
        GUI_BENCHMARK,
        f"widget run on a {shape_text(report['shape'])} volume; {source.label}",
        f"{stall_ms:.0f} ms",
        f"<= {STALL_TARGET_MS:.0f} ms",
        stall_ms <= STALL_TARGET_MS,
        f"run took {fmt_seconds(report['run_duration_s'])} until 0.5 s after the heatmap was shown "
        f"({report['run_ticks']} ticks of a {1000 * report['interval_s']:.0f} ms timer); "
        f"longest stall while the model loaded: {1000.0 * report['load_longest_s']:.0f} ms "
        f"(napari's own first draws of the new window, before: {1000.0 * report['startup_longest_s']:.0f} ms)",
    )


def gui_stall_row(
    quick: bool = False, source: ModelSource | None = None, shape: Triple = GUI_SHAPE, threads: int | None = None
) -> Row:
    """The longest event-loop stall during a widget run (napari_vitcam.testing.stall), in a fresh process.

    Needs a display (``xvfb-run -a``) and the GUI extras; anything missing or
    failing gives a "not measured: <reason>" row.
    """
    import importlib.util

    if quick:
        shape = tuple(min(s, 128) for s in shape)
    case = f"widget run on a {shape_text(shape)} volume"

    def missing(why: str) -> Row:
        return Row("4", GUI_BENCHMARK, case, f"not measured: {why}")

    if not _has_display():
        return missing("no display (run under `xvfb-run -a`)")
    for module in ("napari", "napari_vitcam.testing.stall", "napari_vitcam._napari.widget"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            return missing(f"{module} is not installed")
    source = source or demo_source()
    log(f"row 4: {case}")
    job = {"source": asdict(source), "shape": list(shape), "threads": threads}
    try:
        return gui_row(child_in_subprocess("--gui-child", job), source)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        return missing(str(error))


# --------------------------------------------------------------------------- main


@dataclass(frozen=True)
class Plan:
    rows: tuple[int, ...]
    quick: bool
    device: str  # auto | cpu | cuda
    threads: int | None = None

    @property
    def rounds(self) -> dict[int, int]:
        return {1: 2, 2: 2, 3: 1} if self.quick else {1: 5, 2: 5, 3: 3}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="napari-vitcam benchmarks: prints a markdown table")
    parser.add_argument("--quick", action="store_true", help="fewer rounds per measurement (a smoke run)")
    parser.add_argument("--rows", default="1,2,3,4", help="comma-separated rows to run (default 1,2,3,4)")
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="auto: rows 1-2 on the CPU, row 3 on the CPU and on CUDA when present; cpu or cuda: only that device",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    parser.add_argument("--e2e-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--gui-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.row_list = tuple(sorted({int(r) for r in args.rows.split(",") if r.strip()}))
    except ValueError:
        parser.error(f"--rows takes numbers 1-4 separated by commas, got {args.rows!r}")
    if not set(args.row_list) <= {1, 2, 3, 4}:
        parser.error(f"--rows takes numbers 1-4, got {args.rows!r}")
    return args


def run_plan(plan: Plan) -> list[Row]:
    cuda = torch.cuda.is_available()
    no_gpu = "no GPU on this machine (torch.cuda.is_available() is False)"
    if plan.device == "cuda" and not cuda:
        main_device = None
    else:
        main_device = torch.device("cuda" if plan.device == "cuda" else "cpu")
    rows: list[Row] = []
    if 1 in plan.rows:
        if main_device is None:
            rows.append(
                Row("1", "overhead: grad_cam incl. voxel map / forward+backward", "cuda", f"not measured: {no_gpu}")
            )
        else:
            rows += overhead_rows([demo_source(), vit_b_source()], plan.rounds[1], main_device)
    if 2 in plan.rows:
        if main_device is None:
            rows.append(Row("2", "token map to voxels vs scipy zoom(order=3)", "cuda", f"not measured: {no_gpu}"))
        else:
            rows += voxel_map_rows(VOXEL_MAP_CASES, plan.rounds[2], main_device)
    if 3 in plan.rows:
        devices, skipped = [], {}
        for device in ("cpu", "cuda"):
            if plan.device not in ("auto", device):
                skipped[device] = f"--device {plan.device}"
            elif device == "cuda" and not cuda:
                skipped[device] = no_gpu
            else:
                devices.append(device)
        rows += e2e_rows(demo_source(), E2E_SHAPES, devices, plan.rounds[3], skipped, plan.threads)
    if 4 in plan.rows:
        rows.append(gui_stall_row(plan.quick, threads=plan.threads))
    return sorted(rows, key=lambda r: r.row)


def report(rows: Sequence[Row], machine: dict[str, str], command: str) -> str:
    return "\n".join(
        [
            "## napari-vitcam benchmarks",
            "",
            f"Command: `{command}`",
            "",
            format_machine(machine),
            f"- load average (1/5/15 min) at end: {load_average()}",
            "",
            format_table(rows),
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.e2e_child is not None:
        print(json.dumps(e2e_measure(json.loads(args.e2e_child))))
        return 0
    if args.gui_child is not None:
        print(json.dumps(gui_measure(json.loads(args.gui_child))))
        return 0
    machine = machine_description()
    plan = Plan(args.row_list, args.quick, args.device, args.threads)
    rows = run_plan(plan)
    shown = ["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]
    print(report(rows, machine, " ".join(shown)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
