"""Intensity normalisation and resizing, against numpy."""

import numpy as np
import pytest
import torch

from napari_vitcam.models.spec import InputSpec, Normalization
from napari_vitcam.pipeline.preprocess import normalize_volume, prepare_input, resize_volume


@pytest.fixture
def volume():
    return torch.from_numpy(np.random.default_rng(0).normal(3.0, 2.0, size=(1, 6, 7, 8)).astype(np.float32))


def test_zscore(volume):
    out = normalize_volume(volume, Normalization("zscore")).numpy()
    v = volume.numpy()
    np.testing.assert_allclose(out, (v - v.mean()) / v.std(), atol=1e-5)


def test_zscore_nonzero_keeps_background():
    v = torch.zeros(1, 4, 4, 4)
    v[0, 1:3, 1:3, 1:3] = torch.arange(8.0).reshape(2, 2, 2) + 1
    out = normalize_volume(v, Normalization("zscore", nonzero=True))
    assert (out[v == 0] == 0).all()
    fg = out[v != 0]
    assert abs(float(fg.mean())) < 1e-6 and abs(float(fg.std(unbiased=False)) - 1) < 1e-5


def test_minmax_to_range(volume):
    out = normalize_volume(volume, Normalization("minmax", out_range=(-1, 1)))
    assert float(out.min()) == pytest.approx(-1) and float(out.max()) == pytest.approx(1)


def test_window_clips_and_scales():
    v = torch.tensor([-2000.0, -100.0, 100.0, 300.0, 5000.0]).reshape(1, 1, 1, 5)
    out = normalize_volume(v, Normalization("window", (-100, 300)))
    np.testing.assert_allclose(out.flatten().numpy(), [0, 0, 0.5, 1, 1], atol=1e-6)
    unclipped = normalize_volume(v, Normalization("window", (-100, 300), clip=False))
    assert float(unclipped.max()) > 1


def test_constant_volume_does_not_divide_by_zero():
    v = torch.full((1, 3, 3, 3), 7.0)
    assert torch.isfinite(normalize_volume(v, Normalization("minmax"))).all()
    assert torch.isfinite(normalize_volume(v, Normalization("zscore"))).all()


@pytest.mark.parametrize("mode", ["trilinear", "area", "nearest"])
def test_resize_modes_keep_constants(mode):
    v = torch.full((1, 10, 12, 14), 2.5)
    out = resize_volume(v, (5, 6, 7), mode)
    assert out.shape == (1, 5, 6, 7)
    torch.testing.assert_close(out, torch.full_like(out, 2.5))


def test_prepare_input_order():
    spec_first = InputSpec(1, (4, 4, 4), Normalization("minmax"), normalize_first=True)
    spec_last = InputSpec(1, (4, 4, 4), Normalization("minmax"), normalize_first=False)
    v = np.random.default_rng(2).normal(size=(9, 9, 9)).astype(np.float32)
    a = prepare_input(v, spec_first, torch.device("cpu"))
    b = prepare_input(v, spec_last, torch.device("cpu"))
    assert a.shape == b.shape == (1, 1, 4, 4, 4)
    assert float(b.min()) == pytest.approx(0) and float(b.max()) == pytest.approx(1)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    "norm",
    [
        Normalization("zscore"),
        Normalization("zscore", nonzero=True),
        Normalization("minmax"),
        Normalization("window", (0, 4)),
    ],
)
def test_in_place_and_out_of_place_agree(volume, norm):
    original = volume.clone()
    out = normalize_volume(volume, norm)
    torch.testing.assert_close(volume, original)  # out of place by default
    same = normalize_volume(volume.clone(), norm, inplace=True)
    torch.testing.assert_close(out, same)
