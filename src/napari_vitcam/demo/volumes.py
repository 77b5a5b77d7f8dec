"""Synthetic scan-like volumes with one lesion and its ground-truth mask.

Each volume shows a body-like ellipsoid with smooth tissue texture, a bias
field and noise; vessel-like tubes and small blobs as distractors; and exactly
one lesion whose shape decides the class:

* ``solid``: a homogeneous bright sphere;
* ``ring``: a bright rim (a quarter of the radius, at least 1.6 voxels) around
  a darker core (like a lesion with a necrotic centre).

Both classes are positive evidence at the lesion. Everything that is not the
lesion's shape is drawn from the same distribution for both classes: lesion
diameter (8 to 20 voxels at 64^3), contrast, position inside the body, global
gain and offset, body shape, distractors. Scalars come from a numpy generator
and fields from a torch generator, both seeded from ``seed``, so a seed always
gives the same volume.

Geometry is given for a 64^3 volume and scales with ``size``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

CLASS_NAMES = ("solid", "ring")
SOLID, RING = 0, 1
REFERENCE_SIZE = 64

#: Lesion diameter range in voxels at 64^3 (scaled with ``size``).
DIAMETER_RANGE = (8.0, 20.0)
#: How far a ring's core lies below the tissue, as a fraction of the lesion's contrast.
CORE_DEPTH = 0.5
#: Lesion intensity above the tissue, in units of the tissue level.
CONTRAST_RANGE = (0.4, 0.9)


@dataclass
class DemoVolume:
    """One generated volume.

    ``volume`` is float32 (D, H, W) in arbitrary scanner-like units; ``mask``
    is the lesion (bool, the whole sphere for both classes); ``healthy`` is the
    same volume with the lesion replaced by the tissue it covers (same texture,
    bias and noise), when asked for.
    """

    volume: np.ndarray
    mask: np.ndarray
    label: int
    seed: int
    center: tuple[float, float, float]
    diameter: float
    contrast: float
    class_names: tuple[str, ...] = CLASS_NAMES
    healthy: np.ndarray | None = None
    params: dict = field(default_factory=dict, repr=False)

    @property
    def class_name(self) -> str:
        return self.class_names[self.label]


@dataclass(frozen=True)
class _Sample:
    """Tensors of one sample, before conversion to numpy."""

    volume: torch.Tensor
    mask: torch.Tensor
    healthy: torch.Tensor
    label: int
    center: tuple[float, float, float]
    diameter: float
    contrast: float
    params: dict


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    axis = torch.arange(size, dtype=torch.float32)
    return (axis.view(-1, 1, 1), axis.view(1, -1, 1), axis.view(1, 1, -1))


def _coarse_noise(gen: torch.Generator, coarse: int, size: int) -> torch.Tensor:
    """Zero-mean, unit-scale smooth noise on a ``size``^3 grid: a ``coarse``^3 random grid, upsampled."""
    grid = torch.randn((1, 1, coarse, coarse, coarse), generator=gen)
    return F.interpolate(grid, size=(size, size, size), mode="trilinear", align_corners=True)[0, 0]


def _soft_inside(distance: torch.Tensor, radius: float, edge: float) -> torch.Tensor:
    """1 inside ``radius``, 0 outside, with a smooth edge ``edge`` voxels wide."""
    return torch.sigmoid((radius - distance) / edge)


def _box(low, high, size: int) -> tuple[slice, slice, slice]:
    """The voxel box (as slices) covering ``low..high`` on each axis, clipped to the volume."""
    return tuple(
        slice(max(0, int(np.floor(lo))), max(0, min(size, int(np.ceil(hi)) + 1)))
        for lo, hi in zip(low, high, strict=False)
    )  # type: ignore[return-value]


def _box_distance(center, box, size: int) -> torch.Tensor:
    """Distance of every voxel of ``box`` to ``center``."""
    z, y, x = _grid(size)
    zs, ys, xs = box
    return ((z[zs] - center[0]) ** 2 + (y[:, ys] - center[1]) ** 2 + (x[:, :, xs] - center[2]) ** 2).sqrt_()


def _add_sphere(target: torch.Tensor, center, radius: float, amount: float, edge: float = 0.6) -> None:
    """Add a soft sphere (in place), computed on its bounding box only."""
    reach = radius + 5 * edge + 1
    box = _box(np.asarray(center) - reach, np.asarray(center) + reach, target.shape[0])
    target[box] += amount * _soft_inside(_box_distance(center, box, target.shape[0]), radius, edge)


def _max_segment(target: torch.Tensor, a: np.ndarray, b: np.ndarray, radius: float, amount: float) -> None:
    """Raise ``target`` (in place) to a soft tube of ``radius`` around segment a-b, on its box only."""
    reach = radius + 3.0
    box = _box(np.minimum(a, b) - reach, np.maximum(a, b) + reach, target.shape[0])
    z, y, x = _grid(target.shape[0])
    zs, ys, xs = box
    z, y, x = z[zs], y[:, ys], x[:, :, xs]
    ab = b - a
    length2 = float(ab @ ab) or 1.0
    t = (((z - a[0]) * (ab[0] / length2) + (y - a[1]) * (ab[1] / length2)) + (x - a[2]) * (ab[2] / length2)).clamp_(
        0.0, 1.0
    )
    d = ((z - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (x - a[2] - t * ab[2]) ** 2).sqrt_()
    torch.maximum(target[box], amount * _soft_inside(d, radius, 0.5), out=target[box])


def _point_segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = float(np.clip((p - a) @ ab / max(float(ab @ ab), 1e-9), 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * ab)))


def _sample_in_body(rng: np.random.Generator, center, axes, margin: float) -> np.ndarray:
    """A point uniform in the ellipsoid shrunk by ``margin`` voxels."""
    inner = np.maximum(axes - margin, 1.0)
    while True:
        u = rng.uniform(-1.0, 1.0, size=3)
        if float(u @ u) <= 1.0:
            return center + u * inner


def _generate(
    seed: int,
    size: int,
    label: int | None,
    diameter_range: tuple[float, float],
    contrast_range: tuple[float, float],
    distractors: bool,
) -> _Sample:
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    scale = size / REFERENCE_SIZE
    if label is None:
        label = int(rng.integers(0, 2))
    z, y, x = _grid(size)

    # Body: an ellipsoid with a soft edge, jittered and stretched per volume.
    body_center = size / 2 - 0.5 + rng.uniform(-2.0, 2.0, size=3) * scale
    body_axes = size * rng.uniform(0.37, 0.47, size=3)
    r = (
        ((z - body_center[0]) / body_axes[0]) ** 2
        + ((y - body_center[1]) / body_axes[1]) ** 2
        + ((x - body_center[2]) / body_axes[2]) ** 2
    ).sqrt_()
    body = r.neg_().add_(1.0).mul_(float(body_axes.mean()) / 1.2).sigmoid_()

    # Tissue times bias field, built on a coarse grid and upsampled once: smooth
    # texture at two scales, slightly brighter towards the middle of the body.
    coarse = 12
    nodes = torch.linspace(0.0, size - 1.0, coarse)
    rc = (
        ((nodes.view(-1, 1, 1) - body_center[0]) / body_axes[0]) ** 2
        + ((nodes.view(1, -1, 1) - body_center[1]) / body_axes[1]) ** 2
        + ((nodes.view(1, 1, -1) - body_center[2]) / body_axes[2]) ** 2
    ).sqrt()
    tissue = (
        1.0
        + 0.07 * _coarse_noise(gen, 5, coarse)
        + 0.04 * torch.randn((coarse, coarse, coarse), generator=gen)
        + 0.08 * (1.0 - rc.clamp(max=1.0))
    )
    bias = 1.0 + 0.12 * _coarse_noise(gen, 3, coarse)
    tissue_bias = F.interpolate(
        (tissue * bias)[None, None], size=(size, size, size), mode="trilinear", align_corners=True
    )[0, 0]

    # Lesion: position, size and contrast are drawn the same way for both classes.
    diameter = float(rng.uniform(*diameter_range)) * scale
    radius = diameter / 2
    contrast = float(rng.uniform(*contrast_range))
    lesion_center = _sample_in_body(rng, body_center, body_axes, radius + 3.0 * scale)
    rim = max(1.6 * scale, 0.25 * radius)

    # Distractors: vessel-like tubes (two segments each) and small bright blobs,
    # in units of the tissue level, kept clear of the lesion so that its
    # shape stays intact.
    extra = torch.zeros((size, size, size))
    n_tubes = int(rng.integers(2, 5)) if distractors else 0
    n_blobs = int(rng.integers(2, 6)) if distractors else 0
    tubes = 0
    for _ in range(n_tubes):
        tube_radius = float(rng.uniform(0.9, 1.8)) * scale
        brightness = float(rng.uniform(0.3, 0.7))
        for _attempt in range(20):
            ends = [_sample_in_body(rng, body_center, body_axes, 2.0 * scale) for _ in range(2)]
            middle = (ends[0] + ends[1]) / 2 + rng.normal(0.0, 4.0 * scale, size=3)
            clear = radius + tube_radius + 3.0 * scale
            segments = ((ends[0], middle), (middle, ends[1]))
            if all(_point_segment_distance(lesion_center, a, b) > clear for a, b in segments):
                for a, b in segments:
                    _max_segment(extra, a, b, tube_radius, brightness)
                tubes += 1
                break
    blobs = 0
    for _ in range(n_blobs):
        blob_radius = float(rng.uniform(1.2, 2.5)) * scale
        brightness = float(rng.uniform(0.3, 0.8))
        for _attempt in range(20):
            where = _sample_in_body(rng, body_center, body_axes, blob_radius + 2.0 * scale)
            if np.linalg.norm(where - lesion_center) > radius + blob_radius + 3.0 * scale:
                _add_sphere(extra, where, blob_radius, brightness)
                blobs += 1
                break

    # Acquisition: gain, offset and noise, identical with and without the lesion.
    gain = float(rng.uniform(60.0, 140.0))
    offset = float(rng.uniform(-10.0, 10.0))
    noise_level = float(rng.uniform(0.03, 0.07))
    healthy = torch.randn((size, size, size), generator=gen).mul_(noise_level * gain)
    healthy.addcmul_(body, extra.clamp_(min=-0.9).add_(1.0).mul_(tissue_bias), value=gain).add_(offset)

    # The lesion, added on its bounding box only; a ring is a sphere minus its core.
    reach = radius + 4.0
    box = _box(lesion_center - reach, lesion_center + reach, size)
    d = _box_distance(lesion_center, box, size)
    lesion = contrast * _soft_inside(d, radius, 0.6)
    if label == RING:
        lesion -= (1.0 + CORE_DEPTH) * contrast * _soft_inside(d, radius - rim, 0.6)
    volume = healthy.clone()
    volume[box] += lesion * tissue_bias[box] * gain
    mask = torch.zeros((size, size, size), dtype=torch.bool)
    mask[box] = d <= radius

    params = {
        "gain": gain,
        "offset": offset,
        "noise": noise_level,
        "body_center": body_center.tolist(),
        "body_axes": body_axes.tolist(),
        "tubes": tubes,
        "blobs": blobs,
        "rim": rim,
    }
    return _Sample(
        volume=volume,
        mask=mask,
        healthy=healthy,
        label=label,
        center=(float(lesion_center[0]), float(lesion_center[1]), float(lesion_center[2])),
        diameter=diameter,
        contrast=contrast,
        params=params,
    )


def make_volume(
    seed: int,
    size: int = 64,
    *,
    label: int | None = None,
    diameter_range: tuple[float, float] = DIAMETER_RANGE,
    contrast_range: tuple[float, float] = CONTRAST_RANGE,
    distractors: bool = True,
    with_healthy: bool = False,
) -> DemoVolume:
    """The volume for ``seed``: always the same for the same arguments.

    ``label`` forces the class (0 solid, 1 ring); by default it is drawn from
    the seed, each class with probability 1/2. ``diameter_range`` is in voxels
    at 64^3 and scales with ``size``; ``contrast_range`` is the lesion's
    brightness above the tissue, as a fraction of the tissue level.
    """
    if size < 16:
        raise ValueError(f"size must be at least 16, got {size}")
    if not 0 < diameter_range[0] <= diameter_range[1]:
        raise ValueError(f"diameter_range must be (low, high) with 0 < low <= high, got {diameter_range}")
    if label is not None and label not in (SOLID, RING):
        raise ValueError(f"label must be 0 ({CLASS_NAMES[0]}) or 1 ({CLASS_NAMES[1]}), got {label}")
    sample = _generate(int(seed), int(size), label, diameter_range, contrast_range, distractors)
    return DemoVolume(
        volume=sample.volume.numpy().astype(np.float32, copy=False),
        mask=sample.mask.numpy(),
        label=sample.label,
        seed=int(seed),
        center=sample.center,
        diameter=sample.diameter,
        contrast=sample.contrast,
        healthy=sample.healthy.numpy().astype(np.float32, copy=False) if with_healthy else None,
        params=sample.params,
    )


def make_batch(
    seeds,
    size: int = 64,
    *,
    diameter_range: tuple[float, float] = DIAMETER_RANGE,
    contrast_range: tuple[float, float] = CONTRAST_RANGE,
    distractors: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw volumes (B, 1, D, H, W), labels (B,) and masks (B, D, H, W) for ``seeds``, as tensors."""
    samples = [_generate(int(s), int(size), None, diameter_range, contrast_range, distractors) for s in seeds]
    volumes = torch.stack([s.volume for s in samples])[:, None]
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)
    masks = torch.stack([s.mask for s in samples])
    return volumes, labels, masks
