"""What checking a map against the model costs: deletion + insertion curves, batched, in forward passes.

    python benchmarks/evaluation_cost.py [--quick] [--device auto|cpu|cuda] [--threads N] [--batch-size 8]

Row 5 of the benchmark table (the others are ``benchmarks/run.py``): the demo
ViT (64^3 input, patch 8: 512 patches), one map, the deletion and the
insertion curve (17 points each) with the random-order band (3 orders), the
``blur`` baseline, as :func:`napari_vitcam.evaluation.faithfulness.deletion_and_insertion`
runs them: 77 distinct perturbed inputs (2 x 4 x 17 = 136 curve points, less
the inputs curves share), in batches. The result is that time in units of
one forward pass of one input (no gradients), measured interleaved with it,
round by round; the details give the same time per perturbed input against
one input's forward pass (the gain of batching). One row per batch size.

The table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.measure import Ratio, Row, fmt_seconds, format_machine, format_table, interleaved, median, shape_text
from benchmarks.run import ModelSource, demo_source, describe_vit, log, synchronizer

STEPS = 16
RANDOM_ORDERS = 3
TARGET_FORWARDS = 5.0
"""The issue's goal: deletion and insertion at most a few forward passes' time (batched)."""


def evaluation_cost_row(
    source: ModelSource, rounds: int, device: torch.device, *, batch_size: int = 8, steps: int = STEPS
) -> Row:
    """Deletion + insertion (with the random band) over one forward pass, for ``source``'s model on ``device``."""
    from napari_vitcam.engine.cam import grad_cam
    from napari_vitcam.evaluation.faithfulness import deletion_and_insertion, perturbed_inputs

    log(f"row 5: {source.label} on {device.type}")
    loaded = source.load()
    model = loaded.model.to(device).eval()
    spec = loaded.spec.input
    x = torch.randn(1, spec.channels, *spec.spatial_size, generator=torch.Generator().manual_seed(0)).to(device)
    target = loaded.spec.target_layer
    result = grad_cam(model, x, target, 0)
    grid = result.grid
    token_map = result.token_cam[0]

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def curves() -> None:
        deletion_and_insertion(
            model,
            x,
            token_map,
            grid,
            0,
            baseline="blur",
            steps=steps,
            random_orders=RANDOM_ORDERS,
            batch_size=batch_size,
        )

    times = interleaved({"forward": forward, "curves": curves}, rounds, warmup=1, sync=synchronizer(device))
    ratio = Ratio.of(times["curves"], times["forward"])
    inputs = perturbed_inputs(grid.n_tokens, steps=steps, random_orders=RANDOM_ORDERS)
    per_input = median(times["curves"]) / inputs / median(times["forward"])
    return Row(
        "5",
        "deletion + insertion (random band, blur baseline), batched / one forward pass",
        f"{source.label}; {shape_text(spec.spatial_size)}, {grid.n_tokens} patches, on {device.type}; "
        f"batch {batch_size}",
        ratio.text(),
        f"<= {TARGET_FORWARDS:.0f} forward passes",
        ratio.median <= TARGET_FORWARDS,
        f"{inputs} perturbed inputs in {fmt_seconds(median(times['curves']))}; one forward pass "
        f"{fmt_seconds(median(times['forward']))}; per perturbed input {per_input:.2f} forward passes",
    )


def shipped_source() -> ModelSource:
    """The shipped demo checkpoint (``napari_vitcam/demo/data``), else :func:`benchmarks.run.demo_source`."""
    from napari_vitcam.demo.shipped import SHIPPED_CHECKPOINT

    if SHIPPED_CHECKPOINT.exists():
        source = ModelSource("", checkpoint=str(SHIPPED_CHECKPOINT))
        config = getattr(source.load().model, "config", None)
        if config is not None:
            return ModelSource(f"demo ViT, shipped checkpoint ({describe_vit(config)})", checkpoint=source.checkpoint)
    return demo_source()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="the cost of deletion and insertion curves, as a table row")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--batch-size", type=int, nargs="+", default=[8, 32], help="perturbed inputs per forward pass (a row each)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.measure import machine_description

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    devices = (
        ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else ["cpu"] + (["cuda"] if cuda else [])
    )
    rows = []
    for name in devices:
        if name == "cuda" and not cuda:
            rows.append(Row("5", "deletion + insertion / one forward pass", "cuda", "not measured: no GPU"))
            continue
        rows.extend(
            evaluation_cost_row(shipped_source(), 2 if args.quick else 5, torch.device(name), batch_size=size)
            for size in args.batch_size
        )
    print(format_machine(machine_description()))
    print()
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
