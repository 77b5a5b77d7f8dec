"""Train the demo ViT on generated volumes: ``napari-vitcam train-demo``.

Every step draws a fresh batch of generated volumes (seeds from
:data:`TRAIN_SEED_START` on, so no training volume is ever shown twice and none
is among the held-out evaluation seeds). A share of each batch is shown
without its lesion (the lesion-free twins of volumes in the same batch), with
the target 1/2 for each class, so that neither class can mean "no lesion of
the other kind"; half of the lesion volumes are small lesions, the hardest
to tell apart; and a token readout loss
(:mod:`.token_readout`) holds every token outside the lesion to "no evidence".
The model is the reference ViT with an attention-pooled head, for which
Grad-CAM at the final norm is each token's own class score. A curriculum starts
with large, high-contrast lesions and widens to the full range; the learning
rate warms up linearly, then follows a cosine. At the end the Grad-CAM target
is chosen on validation volumes (the one whose heatmaps point at the lesion
most often) and a native checkpoint is written with the class names, the
normalisation and that target.

Run ``python -m napari_vitcam.demo.train --help`` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from napari_vitcam.demo.evaluate import evaluate_blocks
from napari_vitcam.demo.shipped import SHIPPED_CHECKPOINT, TRAIN_SEED_START, VALIDATION_SEED_START
from napari_vitcam.demo.token_readout import ReadoutCapture, pooling_on_lesion_loss, readout_loss, token_lesion_share
from napari_vitcam.demo.volumes import CLASS_NAMES, CONTRAST_RANGE, DIAMETER_RANGE, _generate, make_batch
from napari_vitcam.models.architectures.vit3d import POOLS, ViT3D, ViTConfig
from napari_vitcam.models.checkpoint import save_checkpoint
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization
from napari_vitcam.pipeline.preprocess import normalize_volume

#: The demo model's input normalisation: z-score over the whole volume. It
#: removes the per-volume gain and offset, and a lesion is too small a share of
#: the volume to move the statistics.
NORMALIZATION = Normalization(kind="zscore")


def normalize_batch(volumes: torch.Tensor, normalization: Normalization = NORMALIZATION) -> torch.Tensor:
    """Normalise each (C, D, H, W) sample of ``volumes`` as the explanation pipeline does."""
    return torch.stack([normalize_volume(v, normalization) for v in volumes])


#: Where the curriculum starts: very large, very bright lesions, no distractors.
EASY_DIAMETERS = (26.0, 30.0)
EASY_CONTRASTS = (1.0, 1.5)


def curriculum(level: float) -> tuple[tuple[float, float], tuple[float, float], float]:
    """Diameter range, contrast range and share of volumes with distractors at ``level`` (0..1).

    Level 0 shows lesions of 26-30 voxels at contrast 1.0-1.5 without
    distractors; level 1 is the final distribution (:data:`DIAMETER_RANGE`,
    :data:`CONTRAST_RANGE`, distractors everywhere). Ranges move linearly in between.
    """
    t = min(1.0, max(0.0, level))

    def lerp(a: float, b: float) -> float:
        return a + (b - a) * t

    diameters = (lerp(EASY_DIAMETERS[0], DIAMETER_RANGE[0]), lerp(EASY_DIAMETERS[1], DIAMETER_RANGE[1]))
    contrasts = (lerp(EASY_CONTRASTS[0], CONTRAST_RANGE[0]), lerp(EASY_CONTRASTS[1], CONTRAST_RANGE[1]))
    return diameters, contrasts, min(1.0, 2.0 * t)


def training_batch(
    seeds: range,
    diameters: tuple[float, float],
    contrasts: tuple[float, float],
    distractor_share: float,
    lesion_free_share: float,
    small_share: float = 0.0,
    twins: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised volumes (B, 1, D, H, W), target probabilities (B, 2) and lesion masks (B, D, H, W) for one step.

    The last ``lesion_free_share`` of the batch are shown without a lesion
    (the tissue it would cover) and with the target 1/2 for each class: no
    lesion, no evidence for either class, so that both classes have to rest on
    the lesion itself; their masks are empty. With ``twins`` they are the
    lesion-free twins of the batch's first lesion volumes (same tissue,
    distractors and noise: the lesion is the only difference the model sees);
    otherwise volumes of their own seeds. Of the volumes with a lesion, the
    first ``small_share`` draw the diameter from the lower third of
    ``diameters`` (small lesions are the hardest to classify). The first
    ``distractor_share`` of the volumes generated have distractors.
    """
    n = len(seeds)
    n_free = round(lesion_free_share * n)
    n_lesion = n - n_free
    if twins and n_free and not n_lesion:
        raise ValueError("lesion-free twins need volumes with a lesion: use a lesion-free share below 1")
    sources = seeds[:n_lesion] if twins else seeds
    n_small = round(small_share * n_lesion)
    n_distractors = round(distractor_share * len(sources))
    small = (diameters[0], diameters[0] + (diameters[1] - diameters[0]) / 3)
    samples = [
        _generate(int(seed), 64, None, small if i < n_small else diameters, contrasts, i < n_distractors)
        for i, seed in enumerate(sources)
    ]
    volumes = [s.volume for s in samples[:n_lesion]]
    targets = [F.one_hot(torch.tensor(s.label), 2).float() for s in samples[:n_lesion]]
    masks = [s.mask for s in samples[:n_lesion]]
    free = [samples[i % n_lesion] for i in range(n_free)] if twins else samples[n_lesion:]
    for sample in free:
        volumes.append(sample.healthy)
        targets.append(torch.full((2,), 0.5))
        masks.append(torch.zeros_like(sample.mask))
    return normalize_batch(torch.stack(volumes)[:, None]), torch.stack(targets), torch.stack(masks)


def learning_rate(progress: float, peak: float, warmup: float, floor: float = 0.02) -> float:
    """Linear warm-up to ``peak`` over the first ``warmup`` of training, then a cosine down to ``floor * peak``."""
    if progress < warmup:
        return peak * max(progress / warmup, 0.01)
    t = (progress - warmup) / max(1e-9, 1.0 - warmup)
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


def build_model(width: int, depth: int, heads: int, pool: str = "attn") -> ViT3D:
    """The reference ViT for 64³ demo volumes, patch 8."""
    config = ViTConfig(
        in_channels=1,
        img_size=(64, 64, 64),
        patch_size=(8, 8, 8),
        width=width,
        depth=depth,
        heads=heads,
        num_classes=2,
        pool=pool,
    )
    return ViT3D(config)


def fan_in_init(model: ViT3D, gain: float = 1.0) -> None:
    """Re-draw every linear layer's weights with std ``gain / sqrt(fan_in)``.

    The ViT's default (std 0.02) makes the per-token MLP features almost zero
    at the start, and with 512 tokens averaged by attention the lesion's signal
    then takes a very long time to emerge; features of unit scale let the
    model pick it up within a few hundred steps.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.trunc_normal_(module.weight, std=gain / math.sqrt(module.in_features))


def demo_spec(model: ViT3D, target_layer: str) -> ModelSpec:
    """The spec stored with the demo checkpoint.

    A pooled head trained with this recipe keeps each token's evidence in the token, so the checkpoint names
    the method it was validated with, Grad-CAM at the final norm; a cls-token model keeps the default chosen
    for its kind (attention rollout).
    """
    return ModelSpec(
        input=InputSpec(channels=1, spatial_size=model.config.img_size, normalization=NORMALIZATION),
        class_names=CLASS_NAMES,
        target_layer=target_layer,
        architecture="ViT3D",
        arguments=model.config.to_dict(),
        method=None if model.config.pool == "cls" else "gradcam",
    )


def write_checkpoint(path: Path, model: ViT3D, spec: ModelSpec) -> Path:
    """Write the native checkpoint (creating its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, model, spec)


def zero_sum_head(model: ViT3D) -> None:
    """Remove the head's common mode: logits that sum to zero, same probabilities.

    Softmax ignores what all logits share, so training leaves that part of the
    head at whatever it started from; it would add an arbitrary term to every
    class score that Grad-CAM explains. Subtracting it makes each class score
    the evidence for that class against the others.
    """
    head = model.head
    assert isinstance(head, nn.Linear)
    with torch.no_grad():
        head.weight.sub_(head.weight.mean(dim=0, keepdim=True))
        head.bias.sub_(head.bias.mean())


def choose_block(model: ViT3D, n_volumes: int, log=print) -> tuple[str, dict]:
    """The block target whose Grad-CAM points at the lesion most often on validation volumes."""
    seeds = range(VALIDATION_SEED_START, VALIDATION_SEED_START + n_volumes)
    results = evaluate_blocks(model, seeds, normalization=NORMALIZATION, baseline=False)
    blocks = [name for name in results if not name.startswith("_")]
    best = max(blocks, key=lambda name: (round(results[name]["pointing_tolerant"], 3), results[name]["mass"]))
    for name in blocks:
        row = results[name]
        log(f"  validation {name}: tolerant pointing {row['pointing_tolerant']:.3f}, mass {row['mass']:.3f}")
    return best, results


def evidence_losses(
    args: argparse.Namespace,
    capture: ReadoutCapture,
    masks: torch.Tensor,
    with_lesion: torch.Tensor,
    patch_size: tuple[int, int, int],
) -> torch.Tensor:
    """The weighted pooling and token readout losses of the last forward pass (see :mod:`.token_readout`)."""
    outside = token_lesion_share(masks, patch_size) == 0
    loss = torch.zeros(())
    if args.pooling_weight > 0 and capture.pooling is not None:
        loss = loss + args.pooling_weight * pooling_on_lesion_loss(capture.pooling, ~outside, with_lesion)
    if args.readout_weight > 0:
        neutral = outside & ~with_lesion[:, None] if args.readout_tokens == "free" else outside
        loss = loss + args.readout_weight * readout_loss(capture.logits(), neutral, args.readout_top)
    return loss


def train(args: argparse.Namespace, log=print) -> tuple[ViT3D, dict]:
    torch.manual_seed(args.seed)
    model = build_model(args.width, args.depth, args.heads, args.pool)
    if args.init_gain > 0:
        fan_in_init(model, args.init_gain)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "pos_embed" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.99),
    )
    val_x, val_y, _ = make_batch(
        range(VALIDATION_SEED_START + 100_000, VALIDATION_SEED_START + 100_000 + args.val_volumes)
    )
    val_x = normalize_batch(val_x)

    needs_capture = args.readout_weight > 0 or args.pooling_weight > 0
    with ReadoutCapture(model) if needs_capture else contextlib.nullcontext() as capture:
        start = time.perf_counter()
        budget = args.minutes * 60 if args.minutes else math.inf
        history: list[dict] = []
        running_loss, running_correct, running_n = 0.0, 0, 0
        accuracy_ema = 0.5
        level = 0.0
        seed = TRAIN_SEED_START + args.seed * 1_000_000_000
        step = 0
        while True:
            # Progress runs on steps or on the time budget, whichever is further along,
            # so that the schedule completes within the budget on a slow machine.
            progress = max(step / args.steps, (time.perf_counter() - start) / budget)
            if progress >= 1.0:
                break
            # Harder lesions once the current ones are learnt, and at the latest on schedule.
            if accuracy_ema >= args.advance_at:
                level += 1.0 / args.level_steps
            level = min(
                1.0, max(level, (progress - args.curriculum_start) / max(1e-9, args.curriculum - args.curriculum_start))
            )
            diameters, contrasts, with_distractors = curriculum(level)
            lr = learning_rate(progress, args.lr, args.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, target, masks = training_batch(
                range(seed, seed + args.batch),
                diameters,
                contrasts,
                with_distractors,
                args.lesion_free,
                small_share=args.small_share,
                twins=args.lesion_free_source == "twin",
            )
            seed += args.batch
            with_lesion = target.max(1).values == 1.0
            y = target.argmax(1)
            model.train()
            logits = model(x)
            loss = F.cross_entropy(logits, target, label_smoothing=args.label_smoothing)
            if capture is not None:
                loss = loss + evidence_losses(args, capture, masks, with_lesion, model.config.patch_size)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            hits = (logits.argmax(1) == y)[with_lesion]
            accuracy_ema = 0.9 * accuracy_ema + 0.1 * float(hits.float().mean())
            running_loss += float(loss.detach()) * len(y)
            running_correct += int(hits.sum())
            running_n += len(hits)
            step += 1

            if step % args.log_every == 0:
                model.eval()
                with torch.no_grad():
                    val_acc = float((model(val_x).argmax(1) == val_y).float().mean())
                elapsed = time.perf_counter() - start
                row = {
                    "step": step,
                    "elapsed_s": round(elapsed, 1),
                    "lr": lr,
                    "loss": running_loss / (args.log_every * args.batch),
                    "train_acc": running_correct / running_n,
                    "val_acc": val_acc,
                    "level": level,
                }
                history.append(row)
                log(
                    f"step {step}  {elapsed / 60:5.1f} min  lr {lr:.2e}  loss {row['loss']:.4f}  "
                    f"train acc {row['train_acc']:.3f}  val acc {val_acc:.3f}  level {level:.2f} "
                    f"(diameter >= {diameters[0]:.1f}, contrast >= {contrasts[0]:.2f})"
                )
                running_loss, running_correct, running_n = 0.0, 0, 0
                if args.state:
                    torch.save(
                        {"state_dict": model.state_dict(), "config": model.config.to_dict(), "step": step}, args.state
                    )
    zero_sum_head(model)
    model.eval()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        val_acc = float((model(val_x).argmax(1) == val_y).float().mean())
    log(f"finished after {step} steps ({step * args.batch} volumes) in {seconds / 60:.1f} min; val acc {val_acc:.3f}")
    return model, {"history": history, "train_seconds": seconds, "steps": step, "val_acc": val_acc}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="napari-vitcam train-demo",
        description="Train the demo 3D ViT (patch 8) on generated solid/ring lesion volumes.",
    )
    parser.add_argument("--out", type=Path, default=Path("demo_vit.safetensors"), help="checkpoint to write")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--install",
        action="store_true",
        help=f"write the checkpoint shipped with the package ({SHIPPED_CHECKPOINT.name})",
    )
    parser.add_argument("--steps", type=int, default=6000, help="most optimisation steps")
    parser.add_argument(
        "--minutes",
        type=float,
        default=27.0,
        help="time budget for the optimisation (0: none); the schedule ends with whichever of steps and minutes runs out first",
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup", type=float, default=0.03, help="warm-up, as a fraction of training")
    parser.add_argument(
        "--curriculum-start",
        type=float,
        default=0.1,
        help="fraction of training after which the curriculum is pushed on schedule",
    )
    parser.add_argument(
        "--curriculum", type=float, default=0.5, help="fraction of training by which lesions reach the full range"
    )
    parser.add_argument(
        "--advance-at", type=float, default=0.9, help="running training accuracy above which lesions get harder"
    )
    parser.add_argument(
        "--level-steps",
        type=int,
        default=600,
        help="steps from the easiest lesions to the full range when advancing on accuracy",
    )
    parser.add_argument(
        "--readout-weight",
        type=float,
        default=1.0,
        help="weight of the token readout loss (0: none): tokens outside the lesion, read alone by the head, must give no evidence",
    )
    parser.add_argument(
        "--pooling-weight",
        type=float,
        default=0.3,
        help="weight of a loss that puts the attention pooling on the lesion's tokens (0: none; attention-pooled head only)",
    )
    parser.add_argument(
        "--readout-top",
        type=int,
        default=8,
        help="also weigh each volume's this many most opinionated neutral tokens (0: only the mean over all)",
    )
    parser.add_argument(
        "--readout-tokens",
        choices=("outside", "free"),
        default="outside",
        help="tokens held to no evidence: 'outside' every token whose patch holds no lesion voxel, 'free' only those of lesion-free volumes",
    )
    parser.add_argument(
        "--init-gain",
        type=float,
        default=1.0,
        help="fan-in scaled initialisation of the linear layers (0: the ViT's own)",
    )
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument(
        "--lesion-free",
        type=float,
        default=0.375,
        help="share of each batch shown without its lesion, with target 1/2 per class",
    )
    parser.add_argument(
        "--lesion-free-source",
        choices=("twin", "fresh"),
        default="twin",
        help="lesion-free volumes: 'twin' the batch's own lesion volumes without their lesion, 'fresh' volumes of their own",
    )
    parser.add_argument(
        "--small-share",
        type=float,
        default=0.5,
        help="share of the lesion volumes whose diameter comes from the lower third of the current range",
    )
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument(
        "--pool",
        choices=POOLS,
        default="attn",
        help="head on the cls token, the mean of the patch tokens or their attention-weighted mean",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--val-volumes", type=int, default=64, help="volumes for the accuracy printed while training")
    parser.add_argument(
        "--block-volumes", type=int, default=40, help="validation volumes used to choose the recommended block"
    )
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument(
        "--state", type=Path, default=None, help="also save the state_dict here while training (torch .pt)"
    )
    return parser.parse_args(argv)


def argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments (one line: cause and remedy), before any training; None: nothing."""
    counts = ("steps", "batch", "width", "depth", "heads", "val_volumes", "block_volumes", "log_every")
    for name in counts:
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} {getattr(args, name)}: give at least 1"
    for name in ("minutes", "threads"):
        if getattr(args, name) < 0:
            return f"--{name} {getattr(args, name)}: give 0 (none) or more"
    if args.width % args.heads:
        return f"--width {args.width} is not divisible by --heads {args.heads}: choose a width that is"
    if args.install:
        return None
    out = args.out
    if out.suffix.lower() not in (".safetensors", ".pt"):
        return f"cannot save the checkpoint as {out.name}: end --out with .safetensors (preferred) or .pt"
    if out.is_dir():
        return f"--out {out} is a folder: give a checkpoint file name"
    if out.exists() and not args.force:
        return f"{out} exists: choose another --out, or pass --force to replace it"
    if args.state is not None and args.state.resolve() == out.resolve():
        return "--state and --out name the same file: give the training state another name"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    problem = argument_problem(args)
    if problem is not None:
        print(f"napari-vitcam train-demo: {problem}", file=sys.stderr)
        return 1
    wall_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = SHIPPED_CHECKPOINT if args.install else args.out
    print(
        f"training ViT3D (width {args.width}, depth {args.depth}, heads {args.heads}, pool {args.pool}, patch 8): "
        f"at most {args.steps} steps of {args.batch} volumes" + (f" or {args.minutes} min" if args.minutes else "")
    )
    model, info = train(args)
    print(f"training took {info['train_seconds'] / 60:.1f} min")
    block, _ = choose_block(model, args.block_volumes)
    spec = demo_spec(model, block)
    write_checkpoint(out, model, spec)
    size_mb = out.stat().st_size / 1e6
    print(f"recommended block {block}; wrote {out} ({size_mb:.2f} MB)")
    print(f"total wall time {(time.perf_counter() - wall_start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
