"""Token layouts that cannot be silently wrong: channel-last maps read right, the unknowable refused."""

import pytest
import torch
from torch import nn

import napari_vitcam as nv
from napari_vitcam.engine.introspect import declared_patch_size
from napari_vitcam.testing.thirdparty import vit_pytorch_simple_vit, vit_pytorch_vit


def test_vit_pytorch_patch_size_is_the_frame_patch_and_the_2_tuple():
    model = vit_pytorch_vit(size=16, patch=4, frame_patch=8)
    assert declared_patch_size(model) == (8, 4, 4)
    from napari_vitcam.testing.thirdparty import vit_pytorch_module

    anisotropic = vit_pytorch_module("vit_3d").ViT(
        image_size=(16, 8), image_patch_size=(4, 2), frames=16, frame_patch_size=8, num_classes=2,
        dim=16, depth=1, heads=2, mlp_dim=16, channels=1, dim_head=8,
    )  # fmt: skip
    assert declared_patch_size(anisotropic) == (8, 4, 2)
    result = nv.grad_cam(anisotropic, torch.randn(1, 1, 16, 16, 8), "transformer.layers.0.0.norm")
    assert result.grid.shape == (2, 4, 4) and result.grid.cell == (8.0, 4.0, 2.0)


def test_simple_vit_patch_embedding_is_read_channel_last():
    torch.manual_seed(0)
    model = vit_pytorch_simple_vit()
    x = torch.randn(2, 1, 16, 16, 16)
    result = nv.grad_cam(model, x, "to_patch_embedding", method="hirescam")
    assert result.layout.layout == "channels_last" and result.grid.shape == (4, 4, 4)
    assert result.grid.cell == (4.0, 4.0, 4.0)
    seen = []
    handle = model.to_patch_embedding.register_forward_hook(lambda m, i, o: seen.append(o))
    logits = model(x)
    handle.remove()
    classes = result.class_idx
    (grad,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), seen[0])
    expected = (seen[0] * grad).sum(-1).relu()  # (B, d, h, w, E): channel-last, summed over E
    torch.testing.assert_close(result.token_cam, expected.detach(), atol=1e-6, rtol=1e-5)


class SwinClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        from monai.networks.nets.swin_unetr import SwinTransformer

        self.swin = SwinTransformer(
            in_chans=1, embed_dim=12, window_size=(4, 4, 4), patch_size=(2, 2, 2),
            depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 2), spatial_dims=3,
        )  # fmt: skip
        self.head = nn.Linear(192, 2)

    def forward(self, x):
        return self.head(self.swin(x)[-1].mean(dim=(2, 3, 4)))


def test_swin_stages_are_offered_and_each_read_in_its_own_axis_order():
    torch.manual_seed(0)
    model = SwinClassifier().eval()
    x = torch.randn(1, 1, 32, 32, 32)
    names = [c.name for c in nv.list_targets(model, x)]
    assert names == [
        "swin.layers1.0.blocks.0", "swin.layers1.0", "swin.layers2.0.blocks.0", "swin.layers2.0",
        "swin.layers3.0.blocks.0", "swin.layers3.0", "swin.layers4.0.blocks.0",
    ]  # fmt: skip
    expected = {
        "swin.layers1.0.blocks.0": ("channels_last", (16, 16, 16)),  # (B, D, H, W, C) on the patch grid
        "swin.layers2.0.blocks.0": ("channels_last", (8, 8, 8)),  # ... on a coarser grid: perturbation decides
        "swin.layers1.0": ("channels_first", (8, 8, 8)),  # a stage's output, (B, C, D, H, W)
        "swin.layers2.0": ("channels_first", (4, 4, 4)),
    }
    for target, (layout, grid) in expected.items():
        result = nv.grad_cam(model, x, target, class_idx=0)
        assert (result.layout.layout, result.grid.shape) == (layout, grid), target
        assert result.grid.cell == tuple(32 / g for g in grid)


class GlobalMix(nn.Module):
    """A 5-D layer whose cells are no place in the input: every cell mixes every voxel."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Linear(16**3, 4**4)
        self.unflatten = nn.Unflatten(1, (4, 4, 4, 4))
        self.head = nn.Linear(4**4, 2)

    def forward(self, x):
        return self.head(self.unflatten(self.mix(x.flatten(1))).flatten(1))


def test_a_layout_that_cannot_be_established_is_refused_naming_the_layer_and_the_fix():
    torch.manual_seed(0)
    model = GlobalMix()
    x = torch.randn(1, 1, 16, 16, 16)
    with pytest.raises(nv.LayoutError, match=r"cannot establish the axis order of 'unflatten'") as info:
        nv.grad_cam(model, x, "unflatten")
    message = str(info.value)
    assert "\n" not in message and "layout='channels_first'" in message and "token_grid" in message
    # said explicitly, it is read as said
    result = nv.grad_cam(model, x, "unflatten", layout="channels_last")
    assert result.layout.layout == "channels_last" and result.grid.shape == (4, 4, 4)
