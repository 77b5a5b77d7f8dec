"""Pointing check of every explainer on small vit-pytorch 3D ViTs trained for a minute or two on the CPU.

The task: a bright cube lies in one corner octant (class 0) or the opposite one
(class 1) of a noisy volume, at a random place inside the octant. A map
"points" when its peak token lies within one patch (Chebyshev distance <= 1
cell) of a token the cube overlaps. Run::

    PYTHONPATH=src python -m benchmarks.pointing --steps 250 --volumes 60

and it prints one line per model and method: accuracy, pointing rate, seconds per volume.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import napari_vitcam as nv
from napari_vitcam.testing.thirdparty import vit_pytorch_module

SIZE, PATCH, CUBE = 24, 4, 8


def make_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Volumes (n, 1, S, S, S), labels (n,) and cube corners (n, 3)."""
    x = 0.5 * torch.randn(n, 1, SIZE, SIZE, SIZE, generator=generator)
    labels = torch.randint(0, 2, (n,), generator=generator)
    half = SIZE // 2
    offset = torch.randint(0, half - CUBE + 1, (n, 3), generator=generator)
    corners = torch.where(labels[:, None] == 0, offset, offset + half)
    grid = torch.arange(CUBE)
    texture = 2.0 + 2.0 * (1 - 2 * ((grid[:, None, None] + grid[None, :, None] + grid[None, None, :]) % 2))
    for i in range(n):
        d, h, w = corners[i].tolist()
        x[i, 0, d : d + CUBE, h : h + CUBE, w : w + CUBE] += texture
    return x, labels, corners


def build(kind: str) -> torch.nn.Module:
    common = {
        "image_size": SIZE, "image_patch_size": PATCH, "frames": SIZE, "frame_patch_size": PATCH, "num_classes": 2,
        "dim": 32, "depth": 3, "heads": 4, "mlp_dim": 64, "channels": 1, "dim_head": 8,
    }  # fmt: skip
    if kind == "vit":
        return vit_pytorch_module("vit_3d").ViT(**common)
    return vit_pytorch_module("simple_vit_3d").SimpleViT(**common)


def train(model: torch.nn.Module, steps: int, seconds: float, seed: int) -> tuple[int, float]:
    """AdamW on fresh batches of 32 for ``steps`` steps or ``seconds`` seconds, whichever comes first."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    done, start = 0, time.perf_counter()
    while done < steps and time.perf_counter() - start < seconds:
        x, y, _ = make_batch(32, generator)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        done += 1
    model.eval()
    return done, time.perf_counter() - start


def points(token_map: np.ndarray, corner: np.ndarray) -> bool:
    grid = token_map.shape
    peak = np.array(np.unravel_index(int(np.argmax(token_map)), grid))
    first = corner // PATCH
    last = (corner + CUBE - 1) // PATCH
    distance = np.maximum(np.maximum(first - peak, peak - last), 0)
    return bool(distance.max() <= 1) and bool(token_map.max() > 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--volumes", type=int, default=100)
    parser.add_argument("--models", default="vit,simple")
    parser.add_argument("--methods", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for kind in args.models.split(","):
        torch.manual_seed(0)
        model = build(kind)
        steps, took = train(model, args.steps, args.seconds, seed=1)
        x, labels, corners = make_batch(args.volumes, torch.Generator().manual_seed(123))
        with torch.no_grad():
            accuracy = float((model(x).argmax(1) == labels).float().mean())
        candidates = nv.list_targets(model, x[:1])
        recommended = nv.recommended_target(candidates)
        first = candidates[0].name
        runs = [(m, recommended) for m in ("gradcam", "hirescam", "layercam", "gradcampp", "xgradcam", "eigencam")]
        runs += [("gradcam", first), ("scorecam", recommended), ("relevance", None), ("rollout", None)]
        runs += [("occlusion", None)]
        if args.methods:
            runs = [r for r in runs if r[0] in args.methods.split(",")]
        print(f"{kind}: {steps} steps in {took:.0f} s, accuracy {accuracy:.2f}, targets {recommended} / {first}")
        cells = (SIZE // PATCH,) * 3
        count = int(np.prod(cells))
        chance = np.mean([np.mean([points(np.eye(1, count, k).reshape(cells), c.numpy()) for k in range(count)])
                          for c in corners])  # fmt: skip
        print(f"  a peak at a random token: pointing {chance:.2f}")
        for method, target in runs:
            hits, start = 0, time.perf_counter()
            for i in range(0, args.volumes, 10):
                result = nv.explain_tokens(model, x[i : i + 10], method, target, labels[i : i + 10])
                maps = result.token_cam.cpu().numpy()
                hits += sum(points(maps[j], corners[i + j].numpy()) for j in range(len(maps)))
            per_volume = (time.perf_counter() - start) / args.volumes
            where = f" at {target}" if target else ""
            print(f"  {method}{where}: pointing {hits / args.volumes:.2f}  ({per_volume * 1000:.0f} ms/volume)")


if __name__ == "__main__":
    main()
