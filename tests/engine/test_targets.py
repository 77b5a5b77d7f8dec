"""Target discovery: candidates in forward order, zero-gradient ones marked, one recommended."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from napari_vitcam import grad_cam
from napari_vitcam.core.errors import DegenerateTargetError, InputError
from napari_vitcam.engine.targets import list_targets, recommended_target
from napari_vitcam.models.architectures.vit3d import ViT3D, ViTConfig
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.models.spec import InputSpec, ModelSpec
from napari_vitcam.models.targets import example_input, targets_for
from napari_vitcam.testing.thirdparty import vit_pytorch_simple_vit, vit_pytorch_vit

CONFIG = ViTConfig(img_size=(16, 24, 16), patch_size=8, width=16, depth=3, heads=2, num_classes=2)


class MeanPooledViT(ViT3D):
    """The reference ViT read out by the mean of its patch tokens instead of the cls token."""

    def forward(self, x):
        return self.head(self.forward_features(x)[:, 1:].mean(dim=1))


class StagedCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv3d(1, 4, 3, padding=1)
        self.stage1 = nn.Sequential(nn.Conv3d(4, 4, 3, padding=1), nn.ReLU())
        self.stage2 = nn.Conv3d(4, 8, 3, stride=2, padding=1)
        self.stage3 = nn.Conv3d(8, 8, 3, padding=1)
        self.stage4 = nn.Conv3d(8, 8, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.stage4(torch.relu(self.stage3(self.stage2(self.stage1(self.stem(x))))))
        return self.head(self.pool(torch.relu(x)).flatten(1))


@pytest.fixture
def x():
    return torch.randn(1, 1, 16, 24, 16, generator=torch.Generator().manual_seed(0))


def test_cls_token_vit(x):
    torch.manual_seed(0)
    candidates = list_targets(ViT3D(CONFIG), x)
    assert [c.name for c in candidates] == [
        "blocks.0.norm1",
        "blocks.0",
        "blocks.1.norm1",
        "blocks.1",
        "blocks.2.norm1",
        "blocks.2",
    ]
    assert [c.kind for c in candidates[:2]] == ["norm1", "block"]
    assert [c.name for c in candidates if c.zero_gradient] == ["blocks.2"]  # patch tokens after the last attention
    assert recommended_target(candidates) == "blocks.2.norm1"
    assert [c.label for c in candidates[-2:]] == ["blocks.2.norm1 (recommended)", "blocks.2 (zero gradient)"]


@pytest.mark.parametrize("pool", ["cls", "attn"])
def test_single_block_vit(x, pool):
    torch.manual_seed(0)
    candidates = list_targets(ViT3D(replace(CONFIG, depth=1, pool=pool)), x)
    if pool == "cls":
        assert [c.label for c in candidates] == ["blocks.0.norm1 (recommended)", "blocks.0 (zero gradient)"]
    else:
        assert [c.label for c in candidates] == ["blocks.0.norm1", "blocks.0", "norm (recommended)"]


class OneMixerTokenModel(nn.Module):
    """Patch tokens through one MLP that is not a transformer block (no ``norm1``)."""

    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Conv3d(1, 16, 8, stride=8)
        self.mixers = nn.ModuleList([nn.Sequential(nn.Linear(16, 16), nn.GELU())])
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        return self.head(self.mixers[0](tokens).mean(dim=1))


def test_a_single_module_that_is_not_a_transformer_block_is_no_block_list(x):
    torch.manual_seed(0)
    candidates = list_targets(OneMixerTokenModel(), x)
    assert [(c.name, c.kind) for c in candidates] == [("patch_embed", "stage")]


def test_zero_gradient_mark_agrees_with_the_engine(x):
    torch.manual_seed(0)
    model = ViT3D(CONFIG)
    with pytest.raises(DegenerateTargetError):
        grad_cam(model, x, "blocks.2")
    assert bool(grad_cam(model, x, "blocks.2.norm1").token_cam.any())


def test_mean_pooled_vit(x):
    torch.manual_seed(0)
    candidates = list_targets(MeanPooledViT(CONFIG), x)
    assert not any(c.zero_gradient for c in candidates)
    assert [c.name for c in candidates[-2:]] == ["blocks.2", "norm"] and candidates[-1].kind == "final_norm"
    assert recommended_target(candidates) == "norm"


@pytest.mark.parametrize("pool", ["mean", "attn"])
def test_grad_cam_at_the_final_norm_of_a_pooled_vit_is_each_tokens_class_score(x, pool):
    """With a pooled head, the score is a weighted mean of head(token): Grad-CAM there is exact."""
    x = torch.cat([x, x.flip(-1)])
    torch.manual_seed(0)
    model = ViT3D(replace(CONFIG, pool=pool)).eval()
    for parameter in model.parameters():  # weights of unit scale, so that every path matters
        torch.nn.init.normal_(parameter, std=0.5)
    result = grad_cam(model, x, "norm", class_idx=[1, 0], upsample="patch")
    with torch.no_grad():
        scores = model.head(model.forward_features(x)) - model.head.bias  # (B, N, K) per token
    own = scores[torch.arange(len(x)), :, torch.tensor([1, 0])]  # explained class per sample
    expected = own.clamp(min=0) / own.shape[1]
    torch.testing.assert_close(result.token_cam.flatten(1), expected, rtol=1e-4, atol=1e-6)
    assert bool((own > 0).any()) and bool((own < 0).any())  # the ReLU had something to do


def test_monai_vit_with_its_tanh_head():
    pytest.importorskip("monai")
    pytest.importorskip("einops")
    from monai.networks.nets import ViT

    torch.manual_seed(0)
    model = ViT(
        1,
        (16, 16, 16),
        (8, 8, 8),
        hidden_size=16,
        mlp_dim=32,
        num_layers=2,
        num_heads=2,
        classification=True,
        num_classes=2,
    )
    example = torch.randn(1, 1, 16, 16, 16)
    candidates = list_targets(model, example, score_layer="classification_head.0")
    assert [c.name for c in candidates] == ["blocks.0.norm1", "blocks.0", "blocks.1.norm1", "blocks.1"]
    assert [c.name for c in candidates if c.zero_gradient] == ["blocks.1"]
    assert recommended_target(candidates) == "blocks.1.norm1"


def test_cnn_last_stages():
    torch.manual_seed(0)
    candidates = list_targets(StagedCNN(), torch.randn(1, 1, 16, 16, 16))
    # the last four stages with a map of more than one cell, in forward order; pooled and flat outputs left out
    assert [c.name for c in candidates] == ["stage1", "stage2", "stage3", "stage4"]
    assert {c.kind for c in candidates} == {"stage"}
    assert recommended_target(candidates) == "stage4"


def test_sequential_cnn_with_inplace_activation():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv3d(4, 8, 3, stride=2, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )
    candidates = list_targets(model, torch.randn(1, 1, 8, 8, 8))
    # the conv whose output the in-place ReLU overwrote is listed once, as the ReLU
    assert [c.name for c in candidates] == ["0", "1", "3"]
    assert recommended_target(candidates) == "3"


def test_monai_resnet_stages():
    pytest.importorskip("monai")
    from monai.networks.nets import ResNet

    torch.manual_seed(0)
    model = ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=[4, 8, 16, 32], n_input_channels=1, num_classes=2)
    candidates = list_targets(model, torch.randn(1, 1, 32, 32, 32))
    assert [c.name for c in candidates] == ["layer1", "layer2", "layer3", "layer4"]
    assert recommended_target(candidates) == "layer4"


def test_targets_for_builds_the_example_from_the_spec():
    torch.manual_seed(0)
    model = ViT3D(CONFIG).eval()
    spec = ModelSpec(input=InputSpec(channels=1, spatial_size=(16, 24, 16)))
    loaded = LoadedModel(model=model, spec=spec)
    example = example_input(spec.input, torch.device("cpu"))
    assert example.shape == (1, 1, 16, 24, 16)
    assert torch.equal(example, example_input(spec.input, torch.device("cpu")))  # reproducible
    assert targets_for(loaded) == list_targets(model, example)
    assert recommended_target(targets_for(loaded)) == "blocks.2.norm1"


def test_probe_leaves_the_model_as_it_was(x):
    model = ViT3D(CONFIG).train()
    hooks_before = sum(len(m._forward_hooks) for m in model.modules())
    list_targets(model, x)
    assert model.training and all(m.training for m in model.modules())
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks_before
    assert all(p.grad is None for p in model.parameters())


class MonaiEncoderClassifier(nn.Module):
    """MONAI's ViT as an encoder (UNETR's ``vit``): it returns its final norm's output; a pooled head on top."""

    def __init__(self):
        super().__init__()
        from monai.networks.nets import ViT

        self.vit = ViT(1, (16, 16, 16), (4, 4, 4), hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2)
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        tokens, _ = self.vit(x)
        return self.head(tokens.mean(1))


def test_a_final_norm_the_encoder_returns_is_listed_and_recommended():
    torch.manual_seed(0)
    candidates = list_targets(MonaiEncoderClassifier(), torch.randn(1, 1, 16, 16, 16))
    assert [c.label for c in candidates][-2:] == ["vit.blocks.1", "vit.norm (recommended)"]
    assert candidates[-1].kind == "final_norm"


def test_vit_pytorch_blocks_held_in_module_lists_offer_their_pre_norms():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 16, 16, 16)
    vit = [c.label for c in list_targets(vit_pytorch_vit(depth=3), x)]
    assert vit == [
        "transformer.layers.0.0.norm",
        "transformer.layers.1.0.norm",
        "transformer.layers.2.0.norm (recommended)",
    ]
    simple = [c.label for c in list_targets(vit_pytorch_simple_vit(depth=2), x)]
    assert simple == ["transformer.layers.0.0.norm", "transformer.layers.1.0.norm", "transformer.norm (recommended)"]


def test_list_targets_refuses_an_example_that_is_not_a_finite_5d_tensor():
    model = ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=2)
    with pytest.raises(InputError, match=r"x must be a \(batch, channels, depth, height, width\) tensor, got \(1, 16"):
        list_targets(model, torch.randn(1, 16, 16, 16))  # a torch size error from inside the model before
    nan = torch.randn(1, 1, 16, 16, 16)
    nan[0, 0, 1, 2, 3] = float("nan")
    with pytest.raises(InputError, match=r"x holds 1 non-finite value\(s\)"):
        list_targets(model, nan)  # NaN gradients would mark every block as having none
