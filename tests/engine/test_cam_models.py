"""Model shapes the engine reads: tuple/mapping outputs, CNN and channel-last maps, score layers."""

import pytest
import torch
from torch import nn

import napari_vitcam as nv


class TupleViT(nn.Module):
    """Returns (logits, hidden_states) like MONAI's ViT, with a Tanh head."""

    def __init__(self):
        super().__init__()
        self.vit = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=2, num_classes=3)
        self.head = nn.Sequential(nn.Linear(32, 3), nn.Tanh())

    def forward(self, x):
        feats = self.vit.forward_features(x)
        return self.head(feats[:, 0]), [feats]


class DictCNN(nn.Module):
    def __init__(self, channels_last=False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU())
        self.stage = nn.Sequential(nn.Conv3d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.norm = nn.LayerNorm(16)
        self.channels_last = channels_last
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        f = self.stage(self.stem(x))  # (B, 16, D/2, H/2, W/2)
        f = self.norm(f.permute(0, 2, 3, 4, 1))  # channel-last (B, d, h, w, 16)
        return {"logits": self.fc(f.mean(dim=(1, 2, 3)))}


def test_tuple_output_and_score_layer_before_tanh():
    model = TupleViT()
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = nv.grad_cam(model, x, "vit.blocks.1.norm1", class_idx=1)
    pre = nv.grad_cam(model, x, "vit.blocks.1.norm1", class_idx=1, score_layer="head.0")
    assert plain.cam.shape == (1, 16, 16, 16)
    torch.testing.assert_close(pre.logits, model.head[0](model.vit.forward_features(x)[:, 0]).detach())
    torch.testing.assert_close(plain.logits, model(x)[0].detach())
    assert pre.score_layer == "head.0"
    # tanh'(z) rescales the gradient: same map shape up to a positive factor per sample
    ratio = plain.token_cam / pre.token_cam.clamp_min(1e-12)
    mask = pre.token_cam > 1e-6
    if mask.any():
        assert torch.allclose(ratio[mask], ratio[mask].flatten()[0].expand(int(mask.sum())), rtol=1e-3)


def test_cnn_channel_first_map_spans_the_input():
    model = DictCNN()
    x = torch.randn(2, 1, 12, 16, 10, generator=torch.Generator().manual_seed(1))
    result = nv.grad_cam(model, x, "stage", class_idx=0, upsample="patch")
    assert result.layout.layout == "channels_first"
    assert result.token_cam.shape == (2, 6, 8, 5)
    assert result.grid.cell == (2.0, 2.0, 2.0)
    assert result.cam.shape == (2, 12, 16, 10)
    torch.testing.assert_close(result.cam[:, ::2, ::2, ::2], result.token_cam)
    # hand Grad-CAM on the map
    feats = model.stage(model.stem(x)).detach().requires_grad_(True)
    score = model.fc(model.norm(feats.permute(0, 2, 3, 4, 1)).mean(dim=(1, 2, 3)))[:, 0].sum()
    (grad,) = torch.autograd.grad(score, feats)
    alpha = grad.mean(dim=(2, 3, 4), keepdim=True)
    torch.testing.assert_close(result.token_cam, (feats * alpha).sum(1).relu().detach(), atol=1e-6, rtol=1e-4)


def test_channel_last_map_from_layer_norm():
    model = DictCNN()
    x = torch.randn(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(2))
    result = nv.grad_cam(model, x, "norm", class_idx=1)
    assert result.layout.layout == "channels_last"
    assert result.token_cam.shape == (1, 4, 4, 4)
    feats = model.norm(model.stage(model.stem(x)).permute(0, 2, 3, 4, 1)).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.fc(feats.mean(dim=(1, 2, 3)))[:, 1].sum(), feats)
    expected = (feats * grad.mean(dim=(1, 2, 3), keepdim=True)).sum(-1).relu()
    torch.testing.assert_close(result.token_cam, expected.detach(), atol=1e-6, rtol=1e-4)


def test_explicit_token_grid_for_a_model_without_patch_embedding():
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 16)
            self.target = nn.Identity()
            self.head = nn.Linear(16, 2)

        def forward(self, x):  # 2x2x2 patches of an 4x4x4 volume, by reshaping
            b = x.shape[0]
            p = x.reshape(b, 2, 2, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4, 6).reshape(b, 8, 8)
            t = self.target(self.proj(p))
            return self.head(t.mean(1))

    model = Flat()
    x = torch.randn(1, 1, 4, 4, 4)
    with pytest.raises(nv.LayoutError, match="token_grid"):
        nv.grad_cam(model, x, "target")
    result = nv.grad_cam(model, x, "target", token_grid=(2, 2, 2))
    assert result.grid.shape == (2, 2, 2) and result.grid.cell == (2.0, 2.0, 2.0)


@pytest.mark.parametrize(
    ("method", "target"), [("occlusion", None), ("rollout", None), ("hirescam", "backbone.vit.blocks.1.norm1")]
)
def test_a_token_grid_made_after_a_stem_spans_the_input(method, target):
    from napari_vitcam.testing.models import BoxOnly
    from napari_vitcam.testing.thirdparty import monai_vit_after_stem

    torch.manual_seed(0)
    box = ((8, 16), (16, 24), (24, 32))  # token (1, 2, 3) of the 4 x 4 x 4 grid of 8^3 voxels
    model = BoxOnly(monai_vit_after_stem(), (32, 32, 32), box).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    if target is not None:  # the stem is found first; its 16^3 grid is not the ViT's: the error says what to pass
        with pytest.raises(nv.LayoutError, match=r"token_grid=\(d, h, w\)"):
            nv.explain_tokens(model, x, method, target)
    result = nv.explain_tokens(model, x, method, target, class_idx=0, token_grid=(4, 4, 4), upsample="patch")
    assert result.grid.cell == (8.0, 8.0, 8.0)
    # each token fills its own 8^3 voxels, over the whole input (not the stem's 2^3 cells in one corner)
    expected = result.token_cam[0].repeat_interleave(8, 0).repeat_interleave(8, 1).repeat_interleave(8, 2)
    torch.testing.assert_close(result.cam[0], expected)
    if method == "occlusion":  # the model reads the box only: occluding it is the map, nothing else
        assert bool(result.token_cam[0, 1, 2, 3] > 0)
        outside = result.token_cam[0].clone()
        outside[1, 2, 3] = 0
        assert not bool(outside.any())
        assert bool((result.cam[0] > 0).equal(model.mask.bool()))


def test_layout_error_names_shapes():
    model = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=1, heads=2)
    with pytest.raises(nv.LayoutError, match=r"expected ViT tokens \(B, T, E\)"):
        nv.grad_cam(model, torch.randn(1, 1, 16, 16, 16), "head")


def test_unknown_target_suggests_names():
    model = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=2)
    with pytest.raises(nv.TargetLayerError, match=r"no module named .blocks.1.norm.; did you mean .*blocks.1.norm1"):
        nv.grad_cam(model, torch.randn(1, 1, 16, 16, 16), "blocks.1.norm")


def test_unknown_target_without_a_close_name_lists_the_models_own_modules():
    model = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=2)
    with pytest.raises(nv.TargetLayerError) as info:
        nv.grad_cam(model, torch.randn(1, 1, 16, 16, 16), "zzz")
    message = str(info.value)
    top = ", ".join(name for name, _ in model.named_children())
    assert f"its top-level modules are {top}" in message and "e.g. 'blocks.0'" in message
    assert "\n" not in message


def test_grad_cam_refuses_nan_input_and_arrays_in_one_line():
    model = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=2)
    x = torch.randn(1, 1, 16, 16, 16)
    x[0, 0, 3, 4, 5] = float("nan")
    x[0, 0, 9, 9, 9] = float("inf")
    kept = x.clone()
    with pytest.raises(nv.InputError, match=r"x holds 2 non-finite value\(s\).*first at index \(0, 0, 3, 4, 5\)"):
        nv.grad_cam(model, x, "blocks.1.norm1")  # a NaN map before: NaN logits, NaN cam
    assert torch.equal(x.isnan(), kept.isnan()) and torch.equal(x.nan_to_num(), kept.nan_to_num())
    with pytest.raises(nv.InputError, match=r"x is a numpy.ndarray, not a torch tensor"):
        nv.grad_cam(model, kept.nan_to_num().numpy(), "blocks.1.norm1")


def test_module_object_as_target():
    model = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=2)
    result = nv.grad_cam(model, torch.randn(1, 1, 16, 16, 16), model.blocks[0].norm1)
    assert result.target_layer == "blocks.0.norm1"


def test_output_without_logits_is_a_clear_error():
    class Weird(nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=1, heads=2)

        def forward(self, x):
            return {"scores": self.vit(x)}

    with pytest.raises(nv.ModelOutputError, match="cannot find logits"):
        nv.grad_cam(Weird(), torch.randn(1, 1, 16, 16, 16), "vit.blocks.0.norm1")


@pytest.mark.parametrize("method", ["gradcam", "relevance", "occlusion"])
def test_a_class_that_is_not_an_integer_is_refused_in_one_line_not_truncated(method):
    from napari_vitcam.testing.thirdparty import monai_vit

    torch.manual_seed(0)
    model = monai_vit(size=16, patch=8).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    target = "blocks.1.norm1" if method == "gradcam" else None
    for bad in (1.7, torch.tensor([0.0, 1.0]), True, "busy", [0, "a"]):
        with pytest.raises(nv.InputError, match="is not a class index: give an integer") as error:
            nv.explain_tokens(model, x, method, target, bad, score_layer="classification_head.0")
        assert "\n" not in str(error.value)
    # integers of every kind still work: numpy's, a tensor, one per sample
    import numpy as np

    by_int = nv.explain_tokens(model, x, method, target, 1, score_layer="classification_head.0")
    for same in (np.int64(1), torch.tensor(1), [np.int32(1), 1], np.array([1, 1])):
        result = nv.explain_tokens(model, x, method, target, same, score_layer="classification_head.0")
        assert result.class_idx.tolist() == [1, 1]
        torch.testing.assert_close(result.token_cam, by_int.token_cam)


@pytest.mark.parametrize(("method", "target"), [("gradcam", "blocks.1.norm1"), ("rollout", None), ("occlusion", None)])
def test_an_input_of_another_dtype_is_explained_in_the_models_dtype(method, target):
    from napari_vitcam.engine.sweeps import sweep_classes
    from napari_vitcam.testing.thirdparty import monai_vit

    torch.manual_seed(0)
    model = monai_vit(size=16, patch=8).eval()
    x = torch.randint(-3, 4, (2, 1, 16, 16, 16))  # integers, as a label or raw CT volume holds them
    reference = nv.explain_tokens(model, x.float(), method, target, [0, 1])
    for given in (x, x.double()):  # float64: what torch.from_numpy gives for most numpy volumes
        result = nv.explain_tokens(model, given, method, target, [0, 1])
        torch.testing.assert_close(result.cam, reference.cam)
        swept = sweep_classes(model, given, method, target)
        torch.testing.assert_close(swept.cams[:, 1], nv.explain_tokens(model, x.float(), method, target, 1).cam)
    assert [c.name for c in nv.list_targets(model, x.double()[:1])] == [
        c.name for c in nv.list_targets(model, x.float()[:1])
    ]
