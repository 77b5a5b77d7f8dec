"""Localisation metrics on hand-made maps: pointing game, energy, best-threshold IoU, per label."""

import numpy as np
import pytest
import torch

from napari_vitcam.core.errors import InputError
from napari_vitcam.evaluation.localisation import (
    best_threshold_iou,
    energy_pointing,
    heatmap_scores,
    label_scores,
    mask_scores,
    peak_distance,
    pointing_game,
)


def cube_mask(shape=(16, 16, 16), low=4, high=8):
    mask = np.zeros(shape, dtype=bool)
    mask[low:high, low:high, low:high] = True
    return mask


def test_pointing_game_strict_and_tolerant():
    mask = cube_mask()
    heat = np.zeros(mask.shape)
    heat[5, 6, 7] = 1.0  # inside
    assert pointing_game(heat, mask) and peak_distance(heat, mask) == 0.0
    heat[:] = 0.0
    heat[5, 6, 10] = 1.0  # 3 voxels beyond the last mask voxel (x = 7)
    assert peak_distance(heat, mask) == pytest.approx(3.0)
    assert not pointing_game(heat, mask)
    assert pointing_game(heat, mask, tolerance=4.0)
    assert not pointing_game(heat, mask, tolerance=2.9)
    heat[:] = 0.0
    heat[10, 11, 7] = 1.0  # diagonal: sqrt(3^2 + 4^2) = 5 from (7, 7, 7)
    assert peak_distance(heat, mask) == pytest.approx(5.0)
    assert not pointing_game(heat, mask, tolerance=4.0)
    # Works on tensors as well.
    assert pointing_game(torch.from_numpy(heat), torch.from_numpy(mask), tolerance=5.0)


def test_energy_pointing():
    mask = cube_mask()  # 64 voxels
    heat = np.zeros(mask.shape)
    heat[mask] = 1.0
    assert energy_pointing(heat, mask) == pytest.approx(1.0)
    heat[0, 0, 0] = 64.0  # as much mass outside as inside
    assert energy_pointing(heat, mask) == pytest.approx(0.5)
    heat[1, 1, 1] = -1000.0  # negative values carry no mass
    assert energy_pointing(heat, mask) == pytest.approx(0.5)
    assert energy_pointing(np.zeros(mask.shape), mask) == 0.0
    uniform = np.ones(mask.shape)
    assert energy_pointing(uniform, mask) == pytest.approx(64 / 16**3)


def test_best_threshold_iou():
    mask = cube_mask()
    heat = mask.astype(float) * 2.0
    iou, threshold = best_threshold_iou(heat, mask)
    assert iou == pytest.approx(1.0) and threshold == pytest.approx(2.0)
    # A map that covers the mask and as many voxels again at a lower level:
    # thresholding above that level recovers the mask exactly.
    heat = np.zeros(mask.shape)
    heat[4:8, 4:8, 4:12] = 1.0
    heat[mask] = 3.0
    assert best_threshold_iou(heat, mask)[0] == pytest.approx(1.0)
    # A flat map over a region twice the mask's size: the only threshold that
    # selects anything selects both halves, IoU 1/2.
    heat = np.zeros(mask.shape)
    heat[4:8, 4:8, 4:12] = 1.0
    assert best_threshold_iou(heat, mask)[0] == pytest.approx(0.5)
    # A map that misses the mask entirely scores at most the all-volume IoU.
    heat = np.zeros(mask.shape)
    heat[12:, 12:, 12:] = 1.0
    assert best_threshold_iou(heat, mask)[0] == pytest.approx(64 / 16**3)
    with pytest.raises(InputError):
        best_threshold_iou(heat, np.zeros(mask.shape, bool))
    with pytest.raises(InputError):
        best_threshold_iou(heat[:-1], mask)


def test_heatmap_scores_of_a_single_hot_voxel():
    mask = cube_mask((64, 64, 64), 20, 36)
    heat = np.zeros(mask.shape)
    heat[28, 28, 28] = 1.0
    scores = heatmap_scores(heat, mask, tolerance=4.0)
    # The best threshold is 0 here: the whole volume (IoU 16^3 / 64^3) beats the single voxel (1 / 16^3).
    assert scores == {"pointing_strict": 1.0, "pointing_tolerant": 1.0, "mass": 1.0, "iou": pytest.approx(1 / 64)}


def test_distances_follow_the_voxel_spacing():
    mask = cube_mask((16, 16, 16), 4, 8)
    heat = np.zeros(mask.shape)
    heat[10, 5, 5] = 1.0  # 3 voxels beyond the cube along the first axis
    assert peak_distance(heat, mask) == pytest.approx(3.0)
    assert peak_distance(heat, mask, spacing=(2.5, 0.8, 0.8)) == pytest.approx(7.5)
    assert pointing_game(heat, mask, tolerance=4.0) and not pointing_game(heat, mask, 4.0, spacing=(2.5, 1, 1))
    with pytest.raises(InputError, match="spacing"):
        peak_distance(heat, mask, spacing=(1.0, 0.0, 1.0))


def test_scores_per_label_of_a_labels_array():
    labels = np.zeros((16, 16, 16), dtype=np.uint8)
    labels[2:6, 2:6, 2:6] = 1
    labels[10:14, 10:14, 10:14] = 3
    heat = np.zeros(labels.shape)
    heat[11, 11, 11] = 1.0
    heat[3, 3, 3] = 0.25
    scores = {s.label: s for s in label_scores(heat, labels, tolerance=0.0)}
    assert sorted(scores) == [1, 3]
    assert scores[3].pointing_strict == 1.0 and scores[1].pointing_strict == 0.0
    assert scores[3].energy == pytest.approx(0.8) and scores[1].energy == pytest.approx(0.2)
    assert scores[1].voxels == scores[3].voxels == 64
    assert mask_scores(heat, labels == 3, 0.0, label=3) == scores[3]
    with pytest.raises(InputError, match="empty"):
        label_scores(heat, np.zeros_like(labels), 0.0)
    with pytest.raises(InputError, match="integers"):
        label_scores(heat, labels.astype(np.float32), 0.0)


def test_a_non_finite_heatmap_is_refused():
    mask = cube_mask()
    heat = np.zeros(mask.shape)
    heat[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        energy_pointing(heat, mask)
