"""Which explainer points at the evidence, on 3D transformers this project did not write?

Trains small models of several families on one task whose evidence is known,
then measures for every registered explainer how often its map points at the
evidence (within one patch) on held-out volumes, and how often removing the
map's top cells lowers the class probability clearly more than removing random
cells (the agreement check of :mod:`napari_vitcam.evaluation.faithfulness`).

The task ("cube"): a noisy 32³ volume with one bright 6³ cube near one corner
(class 0) or near the opposite corner (class 1), its position jittered. The
model can only answer from the cube, so a faithful map points at it.

Families: vit-pytorch ``vit_3d.ViT`` (cls token) and ``simple_vit_3d.SimpleViT``
(mean pooled), MONAI ``ViT`` (cls token, Tanh head), and this project's
``ViT3D`` with a cls token and with a mean-pooled head. Prints a markdown table
(the one in ``docs/evaluation.md``) and writes the numbers as JSON.

    python scripts/measure_explainers.py --volumes 100 --json out/explainers.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_vitcam.engine.dispatch import explain_tokens
from napari_vitcam.engine.explainers import EXPLAINERS, LayerExplainer, PerturbationExplainer
from napari_vitcam.engine.targets import list_targets, recommended_target
from napari_vitcam.evaluation.faithfulness import agreement
from napari_vitcam.evaluation.localisation import pointing_game
from napari_vitcam.models.spec_defaults import pre_activation_layer
from napari_vitcam.testing.models import tiny_vit
from napari_vitcam.testing.thirdparty import monai_vit, vit_pytorch_simple_vit, vit_pytorch_vit

SIZE = 32
PATCH = 4
CUBE = 6
TRAIN_SEED = 1_000_000
TEST_SEED = 0


def cube_volume(seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(volume, cube mask, label) for one seed."""
    rng = np.random.default_rng(seed)
    label = int(rng.integers(2))
    volume = rng.normal(0.0, 1.0, (SIZE, SIZE, SIZE)).astype(np.float32)
    corner = np.array([6, 6, 6]) if label == 0 else np.array([SIZE - 6 - CUBE] * 3)
    start = np.clip(corner + rng.integers(-4, 5, size=3), 0, SIZE - CUBE)
    mask = np.zeros(volume.shape, dtype=bool)
    mask[start[0] : start[0] + CUBE, start[1] : start[1] + CUBE, start[2] : start[2] + CUBE] = True
    volume[mask] += 2.5
    return volume, mask, label


def batch(seeds: range) -> tuple[torch.Tensor, torch.Tensor, list[np.ndarray]]:
    items = [cube_volume(s) for s in seeds]
    x = torch.from_numpy(np.stack([v for v, _, _ in items]))[:, None]
    y = torch.tensor([label for _, _, label in items])
    return x, y, [m for _, m, _ in items]


@dataclass
class Family:
    name: str
    build: Callable[[], nn.Module]


FAMILIES = [
    Family("vit-pytorch ViT (cls)", lambda: vit_pytorch_vit(size=SIZE, patch=PATCH, frame_patch=PATCH, depth=4)),
    Family("vit-pytorch SimpleViT (mean)", lambda: vit_pytorch_simple_vit(size=SIZE, patch=PATCH, frame_patch=PATCH, depth=4)),
    Family("MONAI ViT (cls, Tanh)", lambda: monai_vit(size=SIZE, patch=PATCH, depth=4)),
    Family("ViT3D (cls)", lambda: tiny_vit(size=SIZE, patch=PATCH, width=32, depth=4, heads=2, pool="cls")),
    Family("ViT3D (mean)", lambda: tiny_vit(size=SIZE, patch=PATCH, width=32, depth=4, heads=2, pool="mean")),
]


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def train(model: nn.Module, steps: int, log: Callable[[str], None]) -> float:
    """Adam on fresh volumes each step; returns held-out accuracy on 200 other volumes."""
    torch.manual_seed(0)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    model.train()
    for step in range(steps):
        x, y, _ = batch(range(TRAIN_SEED + step * 16, TRAIN_SEED + (step + 1) * 16))
        loss = nn.functional.cross_entropy(logits_of(model, x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 100 == 0:
            log(f"  step {step} loss {float(loss):.3f}")
    model.eval()
    x, y, _ = batch(range(TRAIN_SEED - 200, TRAIN_SEED))
    with torch.no_grad():
        return float((logits_of(model, x).argmax(1) == y).float().mean())


def measure(model: nn.Module, volumes: int, slow_volumes: int, log: Callable[[str], None]) -> dict[str, dict]:
    score_layer = pre_activation_layer(model)
    example = torch.randn(1, 1, SIZE, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    candidates = list_targets(model, example, score_layer=score_layer)
    target = recommended_target(candidates)
    results: dict[str, dict] = {}
    for name, explainer in EXPLAINERS.items():
        count = slow_volumes if isinstance(explainer, PerturbationExplainer) else volumes
        hits, agrees, seconds = [], [], 0.0
        for seed in range(TEST_SEED, TEST_SEED + count):
            volume, mask, label = cube_volume(seed)
            x = torch.from_numpy(volume)[None, None]
            start = time.perf_counter()
            result = explain_tokens(
                model,
                x,
                name,
                target if isinstance(explainer, LayerExplainer) else None,
                label,
                score_layer=score_layer,
            )
            seconds += time.perf_counter() - start
            hits.append(pointing_game(result.cam[0], mask, tolerance=float(PATCH)))
            check = agreement(model, x, result.token_cam[0], result.grid, label, baseline="blur")
            agrees.append(check.better_than_random)
        results[name] = {
            "pointing": float(np.mean(hits)),
            "agreement": float(np.mean(agrees)),
            "volumes": count,
            "seconds_per_volume": seconds / count,
            "target": target if isinstance(explainer, LayerExplainer) else None,
        }
        log(f"  {name}: pointing {results[name]['pointing']:.2f}, agreement {results[name]['agreement']:.2f}")
    return results


def table(rows: dict[str, dict]) -> str:
    methods = list(EXPLAINERS)
    head = "| model | accuracy | " + " | ".join(EXPLAINERS[m].label for m in methods) + " |"
    lines = [head, "|" + " --- |" * (len(methods) + 2)]
    for family, row in rows.items():
        cells = [f"{row['methods'][m]['pointing']:.2f} ({row['methods'][m]['agreement']:.2f})" for m in methods]
        lines.append(f"| {family} | {row['accuracy']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", type=int, default=100, help="held-out volumes per method")
    parser.add_argument("--slow-volumes", type=int, default=30, help="held-out volumes for perturbation methods")
    parser.add_argument("--steps", type=int, default=600, help="training steps per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=None, help="measure only the families whose name contains this")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: dict[str, dict] = {}
    for family in FAMILIES:
        if args.only and args.only not in family.name:
            continue
        print(f"{family.name}: training {args.steps} steps", flush=True)
        model = family.build()
        accuracy = train(model, args.steps, lambda text: print(text, flush=True))
        print(f"  accuracy {accuracy:.3f}", flush=True)
        rows[family.name] = {
            "accuracy": accuracy,
            "methods": measure(model, args.volumes, args.slow_volumes, lambda t: print(t, flush=True)),
        }
    print()
    print("pointing at the cube within one patch (share of volumes where the agreement check passes):")
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
