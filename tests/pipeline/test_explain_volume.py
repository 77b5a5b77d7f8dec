"""explain_volume: numpy in, aligned heatmap out, errors, the caller's array untouched."""

import numpy as np
import pytest
import torch
from torch import nn

import napari_vitcam as nv
from napari_vitcam.models.architectures.vit3d import Block
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization
from napari_vitcam.pipeline.explain import explain_volume
from napari_vitcam.testing.thirdparty import monai_vit, vit_pytorch_simple_vit, vit_pytorch_vit


class BrightSpotModel(nn.Module):
    """Class 0 = 'bright': the summed intensity of every patch; class 1 its negative."""

    def __init__(self, size=32, patch=8):
        super().__init__()
        self.patch_embed = nn.Conv3d(1, 4, kernel_size=patch, stride=patch, bias=False)
        nn.init.constant_(self.patch_embed.weight, 1.0 / patch**3)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.blocks = nn.ModuleList([nn.Identity()])

    def forward(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = self.blocks[0](torch.cat([self.cls_token.expand(len(x), -1, -1), t], 1))
        score = t[:, 1:].sum(dim=(1, 2))[:, None]
        return torch.cat([score, -score], dim=1)


def loaded(norm=None, size=(32, 32, 32), channels=1):
    spec = ModelSpec(InputSpec(channels, size, norm or Normalization("none")), ("bright", "dark"), "blocks.0")
    return LoadedModel(BrightSpotModel(), spec)


@pytest.mark.parametrize("upsample", ["smooth", "patch"])
def test_hot_spot_is_aligned_whatever_the_resize_factors(upsample):
    shape = (50, 70, 21)  # differs from the model's 32^3 on every axis (up and down)
    volume = np.zeros(shape, dtype=np.float32)
    lo, hi = (20, 40, 7), (34, 58, 14)
    volume[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 5.0
    before = volume.copy()
    result = explain_volume(loaded(), volume, upsample=upsample, device="cpu")
    assert result.heatmap.shape == shape and result.heatmap.dtype == np.float32
    assert result.heatmap.max() == pytest.approx(1.0) and result.heatmap.min() >= 0
    assert result.raw_max > 0
    patch_in_volume = 8 * np.array(shape) / 32
    peak = np.array(np.unravel_index(np.argmax(result.heatmap), shape))
    if upsample == "smooth":
        assert np.all(peak >= lo) and np.all(peak < hi), peak
    else:  # the winning patch overlaps the spot most; its first voxel may lie just outside
        assert np.all(peak > np.array(lo) - patch_in_volume) and np.all(peak < hi), peak
    # the heatmap's centre of mass sits on the spot's centre within one patch (8 model voxels)
    grid = np.indices(shape).reshape(3, -1)
    weights = result.heatmap.reshape(-1)
    com = (grid * weights).sum(1) / weights.sum()
    assert np.all(np.abs(com - (np.array(lo) + np.array(hi) - 1) / 2) < patch_in_volume), com
    np.testing.assert_array_equal(volume, before)
    assert result.predicted_class == 0 and result.class_name == "bright"
    assert result.ranked_probabilities[0][0] == "bright"
    assert set(result.timings) >= {"preprocess", "forward", "backward", "map", "upsample"}


def test_class_by_name_and_empty_map_is_reported_honestly():
    volume = np.zeros((32, 32, 32), np.float32)
    volume[8:16, 8:16, 8:16] = 1.0
    result = explain_volume(loaded(), volume, class_idx="dark")
    assert result.class_idx == 1 and result.class_name == "dark"
    assert result.raw_max == 0.0 and result.heatmap.max() == 0.0  # no positive evidence for 'dark'


def test_channel_first_volume_for_a_two_channel_model():
    model = nv.ViT3D(in_channels=2, img_size=16, patch_size=8, width=32, depth=2, heads=2)
    spec = ModelSpec(InputSpec(2, (16, 16, 16), Normalization("zscore")), ("a", "b"), "blocks.1.norm1")
    volume = np.random.default_rng(0).normal(size=(2, 20, 18, 24)).astype(np.float32)
    result = explain_volume(LoadedModel(model, spec), volume)
    assert result.heatmap.shape == (20, 18, 24)
    with pytest.raises(nv.InputError, match=r"has 3 channels .* model takes 2"):
        explain_volume(LoadedModel(model, spec), np.zeros((3, 16, 16, 16), np.float32))
    with pytest.raises(nv.InputError, match=r"model takes 2 channels: give a \(2, D, H, W\)"):
        explain_volume(LoadedModel(model, spec), np.zeros((16, 16, 16), np.float32))


@pytest.mark.parametrize(
    ("volume", "message"),
    [
        (np.zeros((32, 32), np.float32), r"2 dimensions .* give a 3-D"),
        (np.zeros((2, 2, 8, 8, 8), np.float32), r"5 dimensions"),
        (np.array([["a"]]), r"dtype <U1: give a numeric"),
    ],
)
def test_bad_volumes_get_one_line_messages(volume, message):
    with pytest.raises(nv.InputError, match=message) as info:
        explain_volume(loaded(), volume)
    assert "\n" not in str(info.value)


def test_unknown_class_and_missing_device():
    volume = np.zeros((32, 32, 32), np.float32)
    with pytest.raises(nv.InputError, match="unknown class 'tumour': choose one of bright, dark"):
        explain_volume(loaded(), volume, class_idx="tumour")
    if not torch.cuda.is_available():
        with pytest.raises(nv.DeviceError, match="CUDA is not available"):
            explain_volume(loaded(), volume, device="cuda")
    with pytest.raises(nv.DeviceError, match="unknown device 'gpu0'"):
        explain_volume(loaded(), volume, device="gpu0")


def test_integer_and_read_only_volumes_are_not_modified():
    rng = np.random.default_rng(1)
    volume = rng.integers(-1000, 2000, size=(40, 30, 36)).astype(np.int16)
    volume.setflags(write=False)
    before = volume.copy()
    norm = Normalization("window", (-100.0, 300.0))
    result = explain_volume(loaded(norm), volume)
    np.testing.assert_array_equal(volume, before)
    assert result.preprocessing["normalization"] == "window"
    assert result.heatmap.shape == volume.shape


def test_float32_volume_with_no_normalisation_is_not_shared_with_the_model():
    class Scribbler(BrightSpotModel):
        def forward(self, x):
            out = super().forward(x)
            x.mul_(0)  # a model that writes into its input
            return out

    volume = np.ones((32, 32, 32), np.float32)
    spec = ModelSpec(InputSpec(1, (32, 32, 32)), ("bright", "dark"), "blocks.0")
    explain_volume(LoadedModel(Scribbler(), spec), volume)
    assert volume.min() == 1.0


def test_model_that_fails_on_its_declared_input_gets_a_one_line_message():
    model = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=2)  # fixed 16^3 position embedding
    spec = ModelSpec(InputSpec(1, (24, 24, 24)), ("a", "b"), "blocks.1.norm1")  # the spec disagrees
    with pytest.raises(
        nv.InputError,
        match=r"the model fails on an input of shape \(1, 1, 24, 24, 24\) \(RuntimeError: .*check that the checkpoint's input spec",
    ) as info:
        explain_volume(LoadedModel(model, spec), np.zeros((30, 30, 30), np.float32))
    assert "\n" not in str(info.value)


class Greedy(BrightSpotModel):
    """Asks the allocator for far more memory than exists, after the target."""

    def __init__(self, error=None):
        super().__init__()
        self.error = error

    def forward(self, x):
        out = super().forward(x)
        if self.error is not None:
            raise self.error
        torch.empty(2**62, dtype=torch.uint8)
        return out


def test_cpu_out_of_memory_is_reported_as_such():
    spec = ModelSpec(InputSpec(1, (32, 32, 32)), ("bright", "dark"), "blocks.0")
    with pytest.raises(nv.DeviceOutOfMemoryError, match=r"out of memory on cpu .*\(40, 40, 40\): free memory") as info:
        explain_volume(LoadedModel(Greedy(), spec), np.zeros((40, 40, 40), np.float32), device="cpu")
    assert info.value.device == "cpu" and "\n" not in str(info.value)


def test_device_out_of_memory_moves_the_model_back_to_the_cpu():
    model = Greedy(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"))
    spec = ModelSpec(InputSpec(1, (32, 32, 32)), ("bright", "dark"), "blocks.0")
    with pytest.raises(nv.DeviceOutOfMemoryError, match="out of memory on cpu"):
        explain_volume(LoadedModel(model, spec), np.zeros((32, 32, 32), np.float32), device="cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())


def third_party(build, score_layer=None):
    spec = ModelSpec(InputSpec(1, (16, 16, 16), Normalization("zscore")), ("a", "b"), None, score_layer=score_layer)
    return LoadedModel(build(), spec)


THIRD_PARTY = {
    "vit-pytorch ViT": lambda: third_party(vit_pytorch_vit),
    "vit-pytorch SimpleViT": lambda: third_party(vit_pytorch_simple_vit),
    "MONAI ViT": lambda: third_party(monai_vit, "classification_head.0"),
}


@pytest.mark.parametrize("model", list(THIRD_PARTY))
@pytest.mark.parametrize("method", ["relevance", "rollout"])
def test_third_party_vits_explained_end_to_end_by_attention_without_a_target(model, method):
    torch.manual_seed(0)
    volume = np.random.default_rng(2).normal(size=(20, 18, 24)).astype(np.float32)
    before = volume.copy()
    result = explain_volume(THIRD_PARTY[model](), volume, method=method, device="cpu")
    np.testing.assert_array_equal(volume, before)
    assert result.heatmap.shape == volume.shape and result.heatmap.dtype == np.float32
    assert result.raw_max > 0 and result.heatmap.max() == pytest.approx(1.0) and result.heatmap.min() >= 0
    assert result.token_cam.shape == (4, 4, 4) and result.method == method
    assert "attention" in result.target_layer


@pytest.mark.parametrize("model", list(THIRD_PARTY))
def test_third_party_vits_explained_end_to_end_by_a_layer_method_at_a_listed_target(model):
    loaded_model = THIRD_PARTY[model]()
    target = nv.recommended_target(nv.targets_for(loaded_model))
    assert target is not None
    volume = np.random.default_rng(3).normal(size=(16, 16, 16)).astype(np.float32)
    result = explain_volume(loaded_model, volume, target_layer=target, method="gradcampp", device="cpu")
    assert result.token_cam.shape == (4, 4, 4) and result.raw_max > 0 and result.target_layer == target


def test_a_layer_method_without_any_target_is_a_one_line_error():
    with pytest.raises(nv.InputError, match="no target layer given") as info:
        explain_volume(third_party(vit_pytorch_vit), np.zeros((16, 16, 16), np.float32), method="xgradcam")
    assert "\n" not in str(info.value)


class HiddenPatches(nn.Module):
    """A ViT whose patches are cut by a reshape in forward: nothing in the model says its grid."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(64, 16)
        self.blocks = nn.ModuleList([Block(16, 2, 2.0, 0.0) for _ in range(2)])
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        b = x.shape[0]
        patches = x.reshape(b, 4, 4, 4, 4, 4, 4).permute(0, 1, 3, 5, 2, 4, 6).reshape(b, 64, 64)
        t = self.embed(patches)
        for block in self.blocks:
            t = block(t)
        return self.head(t.mean(1))


def test_token_grid_through_explain_volume_where_the_model_does_not_say_it():
    spec = ModelSpec(InputSpec(1, (16, 16, 16)), ("a", "b"), "blocks.1.norm1")
    volume = np.random.default_rng(4).normal(size=(16, 16, 16)).astype(np.float32)
    for method in ("gradcam", "relevance"):
        with pytest.raises(nv.LayoutError, match=r"token_grid=\(d, h, w\)"):
            explain_volume(LoadedModel(HiddenPatches(), spec), volume, method=method)
        result = explain_volume(LoadedModel(HiddenPatches(), spec), volume, method=method, token_grid=(4, 4, 4))
        assert result.token_cam.shape == (4, 4, 4) and result.raw_max > 0
