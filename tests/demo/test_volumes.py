"""The demo volume generator: deterministic, one lesion, no shortcut to the class."""

import numpy as np
import pytest
from scipy import ndimage

from napari_vitcam.demo import CLASS_NAMES, make_batch, make_volume
from napari_vitcam.demo.volumes import DIAMETER_RANGE, RING, SOLID

N_STATS = 120


@pytest.fixture(scope="module")
def population():
    return [make_volume(seed) for seed in range(N_STATS)]


def auc(a, b) -> float:
    """Probability that a value from ``a`` exceeds one from ``b`` (ties count half)."""
    a, b = np.asarray(a, float)[:, None], np.asarray(b, float)[None, :]
    return float((a > b).mean() + 0.5 * (a == b).mean())


def test_same_seed_same_volume_and_different_seeds_differ():
    a, b = make_volume(7, with_healthy=True), make_volume(7, with_healthy=True)
    np.testing.assert_array_equal(a.volume, b.volume)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.healthy, b.healthy)
    assert (a.label, a.center, a.diameter) == (b.label, b.center, b.diameter)
    c = make_volume(8)
    assert not np.array_equal(a.volume, c.volume)


def test_types_shapes_and_class_names():
    v = make_volume(1)
    assert v.volume.shape == (64, 64, 64) and v.volume.dtype == np.float32
    assert v.mask.shape == (64, 64, 64) and v.mask.dtype == bool
    assert v.label in (0, 1) and v.class_names == CLASS_NAMES == ("solid", "ring")
    assert v.class_name == CLASS_NAMES[v.label]
    assert np.isfinite(v.volume).all()
    small = make_volume(1, size=32)
    assert small.volume.shape == (32, 32, 32) and small.mask.any()


def test_batch_matches_single_volumes():
    volumes, labels, masks = make_batch([3, 4])
    for i, seed in enumerate((3, 4)):
        v = make_volume(seed)
        np.testing.assert_allclose(volumes[i, 0].numpy(), v.volume)
        assert int(labels[i]) == v.label
        np.testing.assert_array_equal(masks[i].numpy(), v.mask)


@pytest.mark.parametrize("seed", range(0, 40, 3))
def test_exactly_one_lesion_inside_the_body(seed):
    v = make_volume(seed, with_healthy=True)
    _, components = ndimage.label(v.mask)
    assert components == 1
    # The lesion is all that differs from the lesion-free volume, and only around the mask.
    changed = np.argwhere(np.abs(v.volume - v.healthy) > 0.02 * v.params["gain"])
    assert len(changed) > 0
    assert np.linalg.norm(changed - np.array(v.center), axis=1).max() <= v.diameter / 2 + 3
    # Every lesion voxel lies inside the body ellipsoid, with a margin.
    center, axes = np.array(v.params["body_center"]), np.array(v.params["body_axes"])
    points = np.argwhere(v.mask)
    assert (((points - center) / axes) ** 2).sum(axis=1).max() < 1.0
    # And the body is clearly brighter than the background there.
    assert v.volume[v.mask].mean() > v.volume[0, 0, :].mean() + 0.5 * v.params["gain"]


def test_lesion_diameters_in_range(population):
    low, high = DIAMETER_RANGE
    for v in population:
        assert low <= v.diameter <= high
        # The mask's equivalent-sphere diameter agrees with the nominal one.
        measured = (6.0 * v.mask.sum() / np.pi) ** (1 / 3)
        assert abs(measured - v.diameter) < 1.0, (v.seed, measured, v.diameter)
    diameters = np.array([v.diameter for v in population])
    assert diameters.min() < low + 2 and diameters.max() > high - 2


def test_both_classes_are_positive_evidence_at_the_lesion():
    for seed in range(12):
        v = make_volume(seed, with_healthy=True)
        lesion = (v.volume - v.healthy) / v.params["gain"]
        z, y, x = (round(c) for c in v.center)
        shell = v.mask & ~ndimage.binary_erosion(v.mask, iterations=2)
        assert lesion[shell].mean() > 0.1  # a bright edge in both classes
        if v.label == SOLID:
            assert lesion[z, y, x] > 0.25
        else:
            assert lesion[z, y, x] < -0.1  # the ring's core is darker than the tissue
    with pytest.raises(ValueError):
        make_volume(0, label=2)
    assert make_volume(0, label=RING).label == RING and make_volume(0, label=SOLID).label == SOLID


def test_classes_balanced(population):
    rings = sum(v.label for v in population)
    assert 0.35 * N_STATS <= rings <= 0.65 * N_STATS


def test_size_intensity_and_position_do_not_reveal_the_class(population):
    labels = np.array([v.label for v in population])
    features = {
        "diameter": [v.diameter for v in population],
        "contrast": [v.contrast for v in population],
        "global mean": [float(v.volume.mean()) for v in population],
        "global std": [float(v.volume.std()) for v in population],
        "body mean": [float(v.volume[v.volume > v.volume.mean()].mean()) for v in population],
        "z": [v.center[0] for v in population],
        "y": [v.center[1] for v in population],
        "x": [v.center[2] for v in population],
        "distance from centre": [np.linalg.norm(np.subtract(v.center, 31.5)) for v in population],
        "mask voxels": [int(v.mask.sum()) for v in population],
    }
    for name, values in features.items():
        values = np.asarray(values, float)
        score = auc(values[labels == 1], values[labels == 0])
        # With ~60 volumes per class a non-informative feature stays well inside this band.
        assert 0.3 < score < 0.7, (name, score)
