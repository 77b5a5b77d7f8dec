"""Does the heatmap point at the lesion? ``napari-vitcam evaluate-demo``.

Over held-out generated volumes (seeds ``start .. start + n - 1``, disjoint
from the training and validation seeds) this reports:

* accuracy of the demo model;
* lesion occlusion: how often replacing the lesion's voxels with the tissue
  they cover (the same volume generated without the lesion) takes away at
  least half (``--occlusion-share``) of the predicted class's confidence
  above chance, ``p - 1/K``;
* for Grad-CAM at every block's ``norm1`` and output and at the final norm
  (where the class score has a gradient), and for a random map of the same
  resolution (random token values, upsampled the same way):

  - pointing game, strict: the heatmap's maximum lies inside the lesion;
  - pointing game, tolerant: within half a patch of the lesion;
  - relevance mass accuracy: the share of the heatmap's mass inside the lesion;
  - best-threshold IoU: the IoU of the lesion with the heatmap thresholded at
    the level that matches it best.

The metric functions live in :mod:`napari_vitcam.evaluation.localisation` and
work on any volume; the tolerance is the one the widget and
``napari-vitcam evaluate`` use (:func:`napari_vitcam.evaluation.explained.patch_tolerance`:
half a patch). For any model, your own volumes and masks, and the checks
against the model and against chance, use ``napari-vitcam evaluate``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_vitcam.core.errors import VitcamError
from napari_vitcam.core.vocabulary import UPSAMPLE_MODES, Upsample, one_line
from napari_vitcam.demo.shipped import SHIPPED_CHECKPOINT, VALIDATION_SEED_START
from napari_vitcam.demo.volumes import make_volume
from napari_vitcam.engine.dispatch import explain_tokens
from napari_vitcam.engine.explainers import EXPLAINERS, LayerExplainer, explainer_label, get_explainer
from napari_vitcam.engine.targets import list_targets
from napari_vitcam.engine.token_grid import grid_from_patches
from napari_vitcam.engine.voxel_map import tokens_to_voxels
from napari_vitcam.evaluation.localisation import heatmap_scores
from napari_vitcam.models.architectures.vit3d import as_triple
from napari_vitcam.models.checkpoint import load_checkpoint
from napari_vitcam.models.spec import InputSpec, Normalization
from napari_vitcam.models.targets import example_input
from napari_vitcam.pipeline.preprocess import prepare_input

PROG = "napari-vitcam evaluate-demo"

RANDOM_BASELINE = "random map"
METRICS = ("pointing_strict", "pointing_tolerant", "mass", "iou")


def random_heatmap(
    model_input_shape: Sequence[int], patch_size: Sequence[int], generator: torch.Generator
) -> np.ndarray:
    """A random map at the model's resolution: uniform token values, upsampled like Grad-CAM's."""
    grid = grid_from_patches(as_triple(list(model_input_shape)), as_triple(list(patch_size)))
    tokens = torch.rand((1, *grid.shape), generator=generator)
    return tokens_to_voxels(tokens, grid, mode="smooth")[0].numpy()


def occlusion_share(probs: torch.Tensor, probs_occluded: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Share of each sample's confidence above chance in ``classes`` that occlusion takes away.

    ``(p - p_occluded) / (p - 1/K)`` with ``p`` the probability of the class
    before occlusion: 1 when occlusion brings the class down to chance, 0 when
    nothing changes, more than 1 when the class drops below chance. A sample
    predicted at chance level gives 0.
    """
    k = probs.shape[1]
    p = probs.gather(1, classes[:, None])[:, 0]
    q = probs_occluded.gather(1, classes[:, None])[:, 0]
    above = p - 1.0 / k
    return torch.where(above > 0, (p - q) / above.clamp(min=1e-12), torch.zeros_like(p))


def block_targets(model) -> list[str]:
    """The targets :func:`~napari_vitcam.engine.targets.list_targets` finds for ``model``, less those with zero gradient.

    For a :class:`~napari_vitcam.models.architectures.vit3d.ViT3D`: every block's ``norm1`` and
    output in forward order, then the final norm; with a cls-token head the
    last block's output and the final norm have no gradient at the patch
    tokens and are left out.
    """
    spec = InputSpec(channels=model.config.in_channels, spatial_size=tuple(model.config.img_size))
    example = example_input(spec, next(model.parameters()).device)
    return [c.name for c in list_targets(model, example) if not c.zero_gradient]


def _mean_rows(rows: list[dict]) -> dict[str, float]:
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


def evaluate_blocks(
    model,
    seeds: Iterable[int],
    *,
    normalization: Normalization,
    targets: Sequence[str] | None = None,
    batch: int = 8,
    upsample: Upsample = "smooth",
    tolerance: float | None = None,
    baseline: bool = True,
    occlusion_threshold: float = 0.5,
    explain: str = "predicted",
    method: str = "gradcam",
    progress=None,
) -> dict:
    """Accuracy, lesion occlusion and per-target localisation metrics over ``seeds``.

    Volumes are normalised with ``normalization`` exactly as the explanation
    pipeline does (:func:`~napari_vitcam.pipeline.preprocess.prepare_input`). Returns a
    dict: per target (and :data:`RANDOM_BASELINE`) the mean of each metric, and
    under ``"_summary"`` accuracy, occlusion figures and counts.
    """
    model.eval()
    size = tuple(model.config.img_size)
    patch = tuple(model.config.patch_size)
    spec = InputSpec(channels=1, spatial_size=size, normalization=normalization)
    tolerance = max(patch) / 2 if tolerance is None else tolerance
    reads_a_layer = isinstance(get_explainer(method), LayerExplainer)
    if not reads_a_layer:  # attention and perturbation methods read no single layer: one row, named by the method
        targets = [explainer_label(method)]
    targets = list(targets) if targets is not None else block_targets(model)
    device = next(model.parameters()).device
    rows: dict[str, list[dict]] = {name: [] for name in targets}
    if baseline:
        rows[RANDOM_BASELINE] = []
    generator = torch.Generator().manual_seed(0)
    correct, occluded, shares, drops, n = 0, 0, [], [], 0
    seeds = list(seeds)
    for first in range(0, len(seeds), batch):
        volumes = [make_volume(s, size=size[0], with_healthy=True) for s in seeds[first : first + batch]]
        x = torch.cat([prepare_input(v.volume, spec, device) for v in volumes])
        healthy = torch.cat([prepare_input(v.healthy, spec, device) for v in volumes])
        labels = torch.tensor([v.label for v in volumes], device=device)
        with torch.no_grad():
            probs = model(x).softmax(1)
            probs_healthy = model(healthy).softmax(1)
        predicted = probs.argmax(1)
        share = occlusion_share(probs, probs_healthy, predicted)
        correct += int((predicted == labels).sum())
        occluded += int((share >= occlusion_threshold).sum())
        shares += share.tolist()
        drops += (probs.gather(1, predicted[:, None]) - probs_healthy.gather(1, predicted[:, None]))[:, 0].tolist()
        n += len(volumes)
        class_idx = predicted if explain == "predicted" else labels
        for name in targets:
            layer = name if reads_a_layer else None
            cams = explain_tokens(model, x, method, layer, class_idx, upsample=upsample).numpy()
            rows[name] += [heatmap_scores(cam, v.mask, tolerance) for cam, v in zip(cams, volumes, strict=False)]
        if baseline:
            rows[RANDOM_BASELINE] += [
                heatmap_scores(random_heatmap(size, patch, generator), v.mask, tolerance) for v in volumes
            ]
        if progress is not None:
            progress(n, len(seeds))
    results: dict[str, dict[str, Any]] = {name: _mean_rows(r) for name, r in rows.items()}
    results["_summary"] = {
        "volumes": n,
        "accuracy": correct / n,
        "occlusion_changed": occluded / n,
        "occlusion_median_share": float(np.median(shares)),
        "occlusion_mean_drop": float(np.mean(drops)),
        "occlusion_threshold": occlusion_threshold,
        "tolerance_voxels": tolerance,
        "explain": explain,
        "upsample": upsample,
        "method": method,
    }
    return results


def load_demo_model(path: str | Path | None = None):
    """The demo model as a :class:`~napari_vitcam.models.loaded_model.LoadedModel` (the shipped one by default)."""
    return load_checkpoint(Path(path) if path is not None else SHIPPED_CHECKPOINT)


def format_table(results: dict, recommended: str | None = None) -> str:
    """The results as a Markdown table (one row per target, the random map last)."""
    lines = [
        "| target | pointing game (strict) | pointing game (± half patch) | relevance mass accuracy | best-threshold IoU |",
        "|---|---|---|---|---|",
    ]
    for name, row in results.items():
        if name.startswith("_"):
            continue
        label = f"`{name}` (recommended)" if name == recommended else (name if name == RANDOM_BASELINE else f"`{name}`")
        lines.append(
            f"| {label} | {row['pointing_strict']:.3f} | {row['pointing_tolerant']:.3f} | {row['mass']:.3f} | {row['iou']:.3f} |"
        )
    s = results["_summary"]
    lines += [
        "",
        f"- volumes: {s['volumes']}",
        f"- accuracy: {s['accuracy']:.3f}",
        f"- lesion occlusion (lesion replaced by the tissue under it) takes away at least "
        f"{s['occlusion_threshold']:.0%} of the predicted class's confidence above chance on "
        f"{s['occlusion_changed']:.3f} of the volumes (median share taken {s['occlusion_median_share']:.2f}; "
        f"mean probability drop {s['occlusion_mean_drop']:.3f})",
    ]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Accuracy, lesion occlusion and Grad-CAM localisation of the demo model on held-out volumes.",
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="checkpoint to evaluate (default: the shipped demo model)"
    )
    parser.add_argument("-n", "--volumes", type=int, default=200, help="number of held-out volumes")
    parser.add_argument("--start", type=int, default=0, help="first seed (held-out seeds are 0 .. 4,999,999)")
    parser.add_argument(
        "--targets",
        nargs="*",
        default=None,
        help="targets to explain at (default: every block's norm1 and output, and the final norm, where the score has a gradient)",
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--upsample", choices=UPSAMPLE_MODES, default="smooth")
    parser.add_argument("--explain", choices=("predicted", "true"), default="predicted", help="class to explain")
    parser.add_argument(
        "--method",
        choices=sorted(EXPLAINERS),
        default="gradcam",
        help="CAM method (default: Grad-CAM, the method the results in docs/evaluation.md are for)",
    )
    parser.add_argument(
        "--occlusion-share",
        type=float,
        default=0.5,
        help="share of the confidence above chance that removing the lesion must take away to count as a change",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--force", action="store_true", help="replace the --json file if it exists")
    return parser.parse_args(argv)


def argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments (one line: cause and remedy), before the model is loaded; None: nothing."""
    for option, value in (("-n/--volumes", args.volumes), ("--batch", args.batch)):
        if value < 1:
            return f"{option} {value}: give at least 1"
    if args.start < 0:
        return f"--start {args.start}: give a seed of 0 or more"
    if args.threads < 0:
        return f"--threads {args.threads}: give 0 (torch's default) or more"
    if not 0 < args.occlusion_share <= 1:
        return f"--occlusion-share {args.occlusion_share}: give a share above 0 and at most 1"
    if args.json is not None:
        if args.json.suffix.lower() != ".json":
            return f"cannot write the results as {args.json.name}: end --json with .json"
        if args.json.is_dir():
            return f"--json {args.json} is a folder: give a .json file name"
        if not args.json.parent.resolve().is_dir():
            return f"the folder {args.json.parent} does not exist: create it or choose another --json"
        if args.json.exists() and not args.force:
            return f"{args.json} exists: choose another --json, or pass --force to replace it"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    problem = argument_problem(args)
    if problem is not None:
        print(f"{PROG}: {problem}", file=sys.stderr)
        return 1
    try:
        return _evaluate(args)
    except VitcamError as error:
        print(f"{PROG}: {one_line(error, limit=400)}", file=sys.stderr)
        return 1


def _evaluate(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.start + args.volumes > VALIDATION_SEED_START:
        print(f"note: seeds from {VALIDATION_SEED_START} on are used for validation and training, not held out")
    loaded = load_demo_model(args.checkpoint)
    start = time.perf_counter()
    results = evaluate_blocks(
        loaded.model,
        range(args.start, args.start + args.volumes),
        normalization=loaded.spec.input.normalization,
        targets=args.targets,
        batch=args.batch,
        upsample=args.upsample,
        occlusion_threshold=args.occlusion_share,
        explain=args.explain,
        method=args.method,
        progress=lambda done, total: print(f"\r{done}/{total} volumes", end="", flush=True),
    )
    print(f"\r{results['_summary']['volumes']} volumes in {time.perf_counter() - start:.0f} s, method {args.method}")
    print(format_table(results, loaded.spec.target_layer))
    if args.json:
        results["_summary"]["recommended"] = loaded.spec.target_layer
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
