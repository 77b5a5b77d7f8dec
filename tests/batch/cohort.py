"""A small cohort on disk: NumPy and NIfTI scans, masks, a CSV, a corrupt file, and a checkpoint."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_vitcam.demo.volumes import make_volume
from napari_vitcam.models.checkpoint import save_checkpoint
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization
from napari_vitcam.testing.models import tiny_vit
from napari_vitcam.testing.scans import oblique_affine, write_nifti

CLASSES = ("solid", "ring")
SIZE = 16


@dataclass
class Cohort:
    root: Path
    checkpoint: Path
    scans: Path
    """A folder: three .npy scans, one .nii.gz scan and one corrupt .nii.gz."""
    table: Path
    """A CSV listing the good scans of ``scans`` with their label and mask."""
    masks: dict[str, np.ndarray]
    labels: dict[str, int]
    corrupt: Path


def make_cohort(root: Path, count: int = 3) -> Cohort:
    """``count`` demo volumes as .npy, one as NIfTI with an oblique affine, a corrupt NIfTI, masks, a CSV."""
    root.mkdir(parents=True, exist_ok=True)
    spec = ModelSpec(InputSpec(1, (SIZE, SIZE, SIZE), Normalization("zscore")), CLASSES, "blocks.1.norm1")
    checkpoint = save_checkpoint(root / "model.safetensors", tiny_vit(size=SIZE, patch=8, seed=3), spec)
    scans = root / "scans"
    masks_dir = root / "masks"
    scans.mkdir()
    masks_dir.mkdir()
    masks, labels, rows = {}, {}, []
    for seed in range(count + 1):
        demo = make_volume(seed, SIZE)
        if seed < count:
            path = scans / f"scan{seed}.npy"
            np.save(path, demo.volume)
        else:
            path = write_nifti(scans / f"scan{seed}.nii.gz", demo.volume, oblique_affine())
        mask_path = masks_dir / f"scan{seed}.mask.npy"
        np.save(mask_path, demo.mask.astype(np.uint8))
        masks[str(path.resolve())] = demo.mask
        labels[str(path.resolve())] = demo.label
        rows.append({"path": f"scans/{path.name}", "label": str(demo.label), "mask": f"masks/{mask_path.name}"})
    corrupt = scans / "broken.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08 this is not a NIfTI file")
    table = root / "cohort.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "mask"])
        writer.writeheader()
        writer.writerows(rows)
    return Cohort(root, checkpoint, scans, table, masks, labels, corrupt)
