"""What each explainer and each sweep costs, relative to Grad-CAM at one block, measured in one run.

On the shipped cls-token demo model (64³, patch 8, 4 blocks), one volume at a time on the CPU (or
``--device cuda``): the median time of each method through ``explain_tokens`` (forward, backward and
map), interleaved round by round so machine load hits every variant alike, and the sweeps: every block
for one class from one forward and one backward pass, every class from one forward pass. Prints
markdown table rows (rows 6 and 7 of ``docs/performance.md``).

    PYTHONPATH=src python -m benchmarks.explainer_cost --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from napari_vitcam.demo.shipped import SHIPPED_CLS_CHECKPOINT
from napari_vitcam.engine.dispatch import explain_tokens
from napari_vitcam.engine.explainers import EXPLAINERS, LayerExplainer, PerturbationExplainer
from napari_vitcam.engine.sweeps import sweep_blocks, sweep_classes
from napari_vitcam.engine.targets import list_targets
from napari_vitcam.models.checkpoint import load_checkpoint


def interleaved(variants: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for run in variants.values():  # warm-up
        run()
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--slow", action="store_true", help="also time the perturbation methods (hundreds of passes)")
    args = parser.parse_args(argv)
    loaded = load_checkpoint(SHIPPED_CLS_CHECKPOINT, device=args.device)
    model, target = loaded.model, loaded.spec.target_layer
    x = torch.randn(1, 1, 64, 64, 64, generator=torch.Generator().manual_seed(0)).to(args.device)
    layers = [c.name for c in list_targets(model, x) if not c.zero_gradient]
    variants: dict[str, Callable[[], object]] = {}
    for name, explainer in EXPLAINERS.items():
        if isinstance(explainer, PerturbationExplainer) and not args.slow:
            continue
        layer = target if isinstance(explainer, LayerExplainer) else None
        variants[name] = lambda name=name, layer=layer: explain_tokens(model, x, name, layer, 0)
    variants[f"gradcam at {layers[0]}"] = lambda: explain_tokens(model, x, "gradcam", layers[0], 0)
    variants["sweep: every block"] = lambda: sweep_blocks(model, x, layers, "gradcam", 0)
    variants["sweep: every class"] = lambda: sweep_classes(model, x, "gradcam", target)
    times = interleaved(variants, args.rounds)
    base = statistics.median(times["gradcam"])
    deepest = statistics.median(times[f"gradcam at {layers[0]}"])
    print("| # | benchmark | case | result | details |")
    print("|---|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        row = "7" if name.startswith("sweep") else "6"
        what = f"{len(layers)} blocks" if name == "sweep: every block" else "2 classes" if "class" in name else ""
        if name == "sweep: every block":  # one backward pass through every block: compare with the deepest block alone
            what += f"; x{median / deepest:.2f} of Grad-CAM at {layers[0]} alone ({deepest * 1000:.0f} ms)"
        print(
            f"| {row} | {name} / Grad-CAM at {target} | demo cls model, 64³, {args.device}{', ' + what if what else ''} "
            f"| x{median / base:.2f} | median {median * 1000:.0f} ms of {args.rounds} rounds (Grad-CAM {base * 1000:.0f} ms) |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
