"""Pointing check of every explainer on small 3D ViTs of several families, trained for a minute or two on the CPU.

Families (``--models``): vit-pytorch ``vit_3d.ViT`` (``vit``, cls token) and
``simple_vit_3d.SimpleViT`` (``simple``, mean pooled), MONAI's ``ViT``
(``monai``, cls token, Tanh head: the scores explained are those before the
Tanh), and this project's ``ViT3D`` with a cls token (``vit3d-cls``) and a
mean-pooled head (``vit3d-mean``).

The task: a noisy volume holds a textured bright cube at a random place
(class 1) or no cube (class 0). Every map explains class 1 on volumes with a
cube; it "points" when its peak token lies within one patch (Chebyshev
distance <= 1 cell) of a token the cube overlaps. Run::

    PYTHONPATH=src python -m benchmarks.pointing --steps 250 --volumes 60

and it prints one line per model and method: accuracy, pointing rate, the share of volumes
where removing the map's top cells lowers the class probability clearly more than random cells
(:func:`napari_vitcam.evaluation.faithfulness.agreement`, blurred cells), seconds per volume.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import napari_vitcam as nv
from napari_vitcam.evaluation.faithfulness import agreement
from napari_vitcam.models.spec_defaults import pre_activation_layer
from napari_vitcam.testing.models import tiny_vit
from napari_vitcam.testing.thirdparty import monai_vit, vit_pytorch_module

SIZE, PATCH, CUBE = 24, 4, 8


def make_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Volumes (n, 1, S, S, S), labels (n,) and cube corners (n, 3).

    Class 1: a textured bright cube at a random place; class 0: no cube. The
    cube is the only evidence for class 1 (a two-corner task would let a model
    answer "class 1" from an empty corner, and a map pointing there would be right).
    """
    x = 0.5 * torch.randn(n, 1, SIZE, SIZE, SIZE, generator=generator)
    labels = torch.randint(0, 2, (n,), generator=generator)
    corners = torch.randint(0, SIZE - CUBE + 1, (n, 3), generator=generator)
    grid = torch.arange(CUBE)
    texture = 2.0 + 2.0 * (1 - 2 * ((grid[:, None, None] + grid[None, :, None] + grid[None, None, :]) % 2))
    for i in range(n):
        if labels[i] == 1:
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
    if kind == "simple":
        return vit_pytorch_module("simple_vit_3d").SimpleViT(**common)
    if kind == "monai":
        return monai_vit(size=SIZE, patch=PATCH, depth=3)
    if kind in ("vit3d-cls", "vit3d-mean"):
        return tiny_vit(size=SIZE, patch=PATCH, width=32, depth=3, heads=4, pool=kind.split("-")[1])
    raise SystemExit(f"unknown model family {kind!r}: choose vit, simple, monai, vit3d-cls or vit3d-mean")


def logits_of(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's (B, classes) output (MONAI's ViT returns it first in a tuple)."""
    out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def train(model: torch.nn.Module, steps: int, seconds: float, seed: int) -> tuple[int, float]:
    """AdamW on fresh batches of 32 for ``steps`` steps or ``seconds`` seconds, whichever comes first."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    done, start = 0, time.perf_counter()
    while done < steps and time.perf_counter() - start < seconds:
        x, y, _ = make_batch(32, generator)
        loss = torch.nn.functional.cross_entropy(logits_of(model, x), y)
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
    parser.add_argument("--models", default="vit,simple,monai,vit3d-cls,vit3d-mean")
    parser.add_argument("--methods", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for kind in args.models.split(","):
        torch.manual_seed(0)
        model = build(kind)
        steps, took = train(model, args.steps, args.seconds, seed=1)
        test_x, test_labels, _ = make_batch(200, torch.Generator().manual_seed(321))
        with torch.no_grad():
            accuracy = float((logits_of(model, test_x).argmax(1) == test_labels).float().mean())
        x, labels, corners = make_batch(4 * args.volumes, torch.Generator().manual_seed(123))
        keep = (labels == 1).nonzero()[:, 0][: args.volumes]
        x, labels, corners = x[keep], labels[keep], corners[keep]
        score_layer = pre_activation_layer(model)
        candidates = nv.list_targets(model, x[:1], score_layer=score_layer)
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
            hits, agrees, seconds = 0, {"blur": 0, "mean": 0}, 0.0
            for i in range(0, len(x), 10):
                start = time.perf_counter()
                result = nv.explain_tokens(
                    model, x[i : i + 10], method, target, labels[i : i + 10], score_layer=score_layer
                )
                seconds += time.perf_counter() - start
                maps = result.token_cam.cpu().numpy()
                hits += sum(points(maps[j], corners[i + j].numpy()) for j in range(len(maps)))
                for j in range(len(maps)):
                    for baseline in agrees:
                        check = agreement(model, x[i + j : i + j + 1], maps[j], result.grid, 1, baseline=baseline)
                        agrees[baseline] += check.better_than_random
            n = len(x)
            where = f" at {target}" if target else ""
            print(
                f"  {method}{where}: pointing {hits / n:.2f}, agreement blur {agrees['blur'] / n:.2f}, "
                f"mean {agrees['mean'] / n:.2f}  ({seconds / n * 1000:.0f} ms/volume)",
                flush=True,
            )


if __name__ == "__main__":
    main()
