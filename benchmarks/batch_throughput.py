"""Batch throughput on the CPU: volumes per second with 1 and 2 Dask workers, and the memory of a worker.

    python benchmarks/batch_throughput.py [--volumes 24] [--size 64] [--checkpoint PATH] [--variants 1x1,1x2,2x1]

Each variant ``WxT`` is W worker processes with T torch threads each
(``1x2`` and ``2x1`` on two cores are what a local batch chooses for 1 and 2
workers; ``1x1`` against ``2x1`` isolates the worker count). For each, a
fresh local cluster first explains a warm-up batch, so that every worker has
loaded the model; then a fresh output folder of ``--volumes`` demo volumes is
timed from the call to the table (the client's checkpoint check included). Cluster start-up and model loading
are reported apart. Memory per worker is the worker process's resident-memory
high-water mark (``ru_maxrss``): interpreter, torch, the model and the
volumes it explained. The markdown table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.measure import Row, fmt_bytes, format_machine, format_table, machine_description


def _peak_rss() -> int:
    """This process's resident-memory high-water mark in bytes (run on each worker)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


def _set_threads(count: int) -> int:
    import torch

    torch.set_num_threads(count)
    return torch.get_num_threads()


def write_volumes(folder: Path, count: int, size: int, first_seed: int = 0) -> Path:
    """``count`` demo volumes of ``size``^3 as .npy files in ``folder``."""
    from napari_vitcam.demo.volumes import make_volume

    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(first_seed, first_seed + count):
        np.save(folder / f"case{seed:04d}.npy", make_volume(seed, size).volume)
    return folder


def default_checkpoint(folder: Path, size: int) -> Path:
    """The shipped demo ViT when the volumes have its input size, else a small seeded ViT for ``size``."""
    from napari_vitcam.demo.shipped import shipped_checkpoint
    from napari_vitcam.models.checkpoint import save_checkpoint
    from napari_vitcam.testing.models import tiny_vit

    if size == 64 and shipped_checkpoint().is_file():
        return shipped_checkpoint()
    patch = max(4, size // 8)
    return save_checkpoint(folder / "vit.safetensors", tiny_vit(size=size, patch=patch, width=32, depth=2))


def measure(
    checkpoint: Path, scans: Path, warmup: Path, root: Path, workers: int, threads: int, in_process: bool
) -> dict:
    """Start-up, steady throughput and peak worker memory of one cluster size."""
    import distributed

    from napari_vitcam.batch import run_batch

    start = time.perf_counter()
    cluster = distributed.LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=not in_process, dashboard_address=":0", silence_logs=40
    )
    client = distributed.Client(cluster)
    try:
        if not in_process:
            client.run(_set_threads, threads)
        started = time.perf_counter() - start
        clock = time.perf_counter()
        name = f"{workers}x{threads}"
        run_batch(checkpoint, warmup, root / f"warmup-{name}", client=client, device="cpu", table_format="csv")
        warm = time.perf_counter() - clock
        clock = time.perf_counter()
        run = run_batch(checkpoint, scans, root / f"out-{name}", client=client, device="cpu", table_format="csv")
        seconds = time.perf_counter() - clock
        peaks = list(client.run(_peak_rss).values())
    finally:
        client.close()
        cluster.close()
    if run.failed:
        raise RuntimeError(f"{run.failed} cases failed: {[r['error'] for r in run.rows if r['error']][:1]}")
    return {
        "workers": workers,
        "volumes": run.computed,
        "seconds": seconds,
        "rate": run.computed / seconds,
        "startup": started,
        "warmup": warm,
        "peak_rss": max(peaks),
        "threads": threads,
    }


def rows_for(results: Sequence[dict], size: int, in_process: bool) -> list[Row]:
    base = results[0]["rate"]
    rows = []
    for result in results:
        where = "threads of one process" if in_process else "processes"
        threads = "" if in_process else f", {result['threads']} torch thread(s) each"
        rows.append(
            Row(
                row="5",
                benchmark="batch throughput (CPU)",
                case=f"{result['volumes']} volumes of {size}^3, {result['workers']} worker(s){threads}",
                result=f"{result['rate']:.2f} volumes/s (x{result['rate'] / base:.2f})",
                details=(
                    f"workers as {where}; memory per worker {fmt_bytes(result['peak_rss'])} (peak RSS); "
                    f"cluster start {result['startup']:.1f} s, warm-up batch (model load) {result['warmup']:.1f} s"
                ),
            )
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", type=int, default=24)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument(
        "--variants", default="1x1,1x2,2x1", help="WORKERSxTHREADS to compare (torch threads per worker)"
    )
    parser.add_argument("--in-process", action="store_true", help="workers as threads (a smoke run only)")
    args = parser.parse_args(argv)
    variants = [tuple(int(n) for n in v.split("x")) for v in args.variants.split(",")]
    counts = [w for w, _ in variants]
    with tempfile.TemporaryDirectory(prefix="vitcam-batch-bench-") as name:
        root = Path(name)
        checkpoint = args.checkpoint or default_checkpoint(root, args.size)
        print(f"writing {args.volumes} volumes of {args.size}^3...", file=sys.stderr)
        scans = write_volumes(root / "scans", args.volumes, args.size)
        warmup = write_volumes(root / "warmup", 2 * max(counts), args.size, first_seed=100_000)
        results = []
        for workers, threads in variants:
            print(f"{workers} worker(s) x {threads} thread(s)...", file=sys.stderr)
            results.append(measure(checkpoint, scans, warmup, root, workers, threads, args.in_process))
    print(format_table(rows_for(results, args.size, args.in_process)))
    print()
    print(format_machine(machine_description()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
