"""What explain_volume refuses before the model runs, and what it never returns: NaN results.

Non-finite voxels, non-finite model outputs, classes given as numpy integers,
booleans or floats, tensors that require grad, unknown upsampling modes.
"""

import numpy as np
import pytest
import torch
from tests.pipeline.test_explain_volume import BrightSpotModel

import napari_vitcam as nv
from napari_vitcam.core.errors import NonFiniteInputError
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization
from napari_vitcam.pipeline.explain import explain_volume


class CountingModel(BrightSpotModel):
    """Counts its forward passes, so a test can tell an error came before the model ran."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


ZSCORE = Normalization("zscore")


def counting(norm=ZSCORE):
    spec = ModelSpec(InputSpec(1, (32, 32, 32), norm), ("bright", "dark"), "blocks.0")
    return LoadedModel(CountingModel(), spec)


def spot(shape=(32, 32, 32), dtype=np.float32):
    volume = np.zeros(shape, dtype)
    volume[8:16, 8:16, 8:16] = 5.0
    return volume


@pytest.mark.parametrize(
    ("value", "dtype", "words"),
    [
        (np.nan, np.float32, r"1 NaN"),
        (np.inf, np.float32, r"1 ±Inf"),
        (-np.inf, np.float64, r"1 ±Inf"),
        (1e39, np.float64, r"1 beyond float32.*rescale values beyond"),
    ],
)
def test_one_non_finite_voxel_is_refused_with_where_before_the_model_runs(value, dtype, words):
    loaded = counting()
    volume = spot(dtype=dtype)
    volume[3, 20, 7] = value
    with pytest.raises(
        nv.InputError, match=r"1 of 32768 voxels are not finite \(.*; the first at index \(3, 20, 7\)\)"
    ):
        explain_volume(loaded, volume)
    with pytest.raises(NonFiniteInputError, match=words) as info:
        explain_volume(loaded, volume)
    assert "\n" not in str(info.value) and loaded.model.calls == 0
    if value == value and abs(value) != 1e39:  # NaN and ±Inf can be replaced; an overflow needs rescaling
        assert "or choose nonfinite=replace" in str(info.value)


def test_non_finite_voxels_are_counted_and_the_first_is_named_in_the_callers_layout():
    model = nv.ViT3D(in_channels=2, img_size=16, patch_size=8, width=32, depth=2, heads=2)
    spec = ModelSpec(InputSpec(2, (16, 16, 16), Normalization("zscore")), ("a", "b"), "blocks.1.norm1")
    volume = np.ones((2, 10, 12, 14), np.float32)
    volume[1, 4, 5, 6] = np.nan
    volume[1, 9, 0, 0] = np.inf
    volume[0, 9, 11, 13] = np.nan
    with pytest.raises(nv.InputError, match=r"3 of 3360 voxels .*2 NaN, 1 ±Inf; the first at index \(0, 9, 11, 13\)"):
        explain_volume(LoadedModel(model, spec), volume)


def test_replace_gives_the_answer_of_the_cleaned_volume_and_leaves_the_callers_array_alone():
    volume = spot()
    volume[0, 0, 0] = np.nan
    volume[31, 31, 31] = np.inf
    volume[20, 3, 3] = -np.inf
    given = volume.copy()
    raw = Normalization("none")
    result = explain_volume(counting(raw), volume, nonfinite="replace")
    cleaned = spot()
    cleaned[0, 0, 0], cleaned[31, 31, 31], cleaned[20, 3, 3] = 0.0, 5.0, 0.0  # NaN -> 0, ±Inf -> the extremes
    expected = explain_volume(counting(raw), cleaned)
    np.testing.assert_array_equal(volume, given)  # NaN and Inf still there: nothing written into it
    assert np.isfinite(result.probabilities).all() and np.isfinite(result.heatmap).all()
    np.testing.assert_allclose(result.probabilities, expected.probabilities, rtol=1e-6)
    np.testing.assert_allclose(result.heatmap, expected.heatmap, atol=1e-6)
    assert result.predicted_name == "bright" and result.heatmap.max() == pytest.approx(1.0)


def test_a_volume_with_no_finite_voxel_cannot_be_replaced():
    with pytest.raises(nv.InputError, match="no finite voxel"):
        explain_volume(counting(), np.full((8, 8, 8), np.nan, np.float32), nonfinite="replace")
    with pytest.raises(nv.InputError, match="unknown nonfinite choice 'zero': choose one of error, replace"):
        explain_volume(counting(), spot(), nonfinite="zero")


def test_values_too_large_for_float32_arithmetic_are_refused_not_flattened():
    volume = spot()
    volume[0, 0, 0], volume[1, 1, 1] = 3e38, -3e38  # finite, but their span is not
    loaded = counting(Normalization("minmax"))
    with pytest.raises(nv.InputError, match=r"normalising the volume gives non-finite values .*3e\+38.*rescale"):
        explain_volume(loaded, volume)
    assert loaded.model.calls == 0


def test_nan_weights_are_a_one_line_error_never_a_nan_result():
    loaded = counting()
    with torch.no_grad():
        loaded.model.patch_embed.weight[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(
        nv.ModelOutputError, match=r"the model's output holds 2 non-finite value\(s\).*check the checkpoint"
    ) as info:
        explain_volume(loaded, spot())
    assert "\n" not in str(info.value)


def test_a_numpy_integer_class_is_a_class_index():
    for index in (np.int64(1), np.int32(1), np.uint8(1), torch.tensor(1)):
        result = explain_volume(counting(), spot(), class_idx=index)
        assert result.class_idx == 1 and result.class_name == "dark"


@pytest.mark.parametrize(
    ("class_idx", "message"),
    [
        (True, r"class True is a boolean: give a class index \(an integer\) or a class name"),
        (np.bool_(False), r"class .*False.* is a boolean"),
        (1.0, r"class 1.0 is a float: give a class index"),
        (np.float32(1), r"is a float32: give a class index"),
        (2, r"class index 2 is out of range: choose 0 to 1 \(bright, dark\)"),
        (-1, r"class index -1 is out of range"),
    ],
)
def test_booleans_floats_and_out_of_range_classes_are_refused_before_the_model_runs(class_idx, message):
    loaded = counting()
    with pytest.raises(nv.InputError, match=message):
        explain_volume(loaded, spot(), class_idx=class_idx)
    assert loaded.model.calls == 0


def test_a_tensor_that_requires_grad_is_explained_like_its_values():
    volume = spot()
    tensor = torch.from_numpy(volume.copy()).requires_grad_(True)
    result = explain_volume(counting(), tensor)
    expected = explain_volume(counting(), volume)
    np.testing.assert_allclose(result.heatmap, expected.heatmap, atol=1e-6)
    assert result.predicted_class == expected.predicted_class and tensor.grad is None
    assert torch.equal(tensor.detach(), torch.from_numpy(volume))


@pytest.mark.parametrize("upsample", ["bilinear", "Smooth", None])
def test_an_unknown_upsample_mode_is_named_before_any_forward_pass(upsample):
    loaded = counting()
    with pytest.raises(nv.InputError, match=r"unknown upsample mode .*: choose one of smooth, patch") as info:
        explain_volume(loaded, spot(), upsample=upsample)
    assert "model fails" not in str(info.value) and loaded.model.calls == 0


def test_an_unknown_method_is_named_before_any_forward_pass():
    loaded = counting()
    with pytest.raises(nv.InputError, match=r"unknown method 'gradcam\+\+'"):
        explain_volume(loaded, spot(), method="gradcam++")
    assert loaded.model.calls == 0


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_check_volume_finite_says_what_explain_volume_says_and_leaves_the_array_alone(dtype):
    from napari_vitcam.pipeline.checks import check_volume_finite

    volume = spot(dtype=dtype)
    volume[3, 20, 7] = np.inf
    kept = volume.copy()
    with pytest.raises(nv.InputError) as checked:
        check_volume_finite(volume)
    with pytest.raises(nv.InputError) as explained:
        explain_volume(counting(), volume)
    assert str(checked.value) == str(explained.value)
    np.testing.assert_array_equal(volume, kept)
    check_volume_finite(volume, "replace")  # some voxels are finite: replace can handle it
    check_volume_finite(np.full((4, 4, 4), 7, np.int16))
    with pytest.raises(nv.InputError, match="no finite voxel"):
        check_volume_finite(np.full((4, 4, 4), np.nan), "replace")
