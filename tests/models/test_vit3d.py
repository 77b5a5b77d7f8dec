"""The reference 3D ViT."""

import pytest
import torch

import napari_vitcam as nv


def test_shapes_names_and_anisotropic_grid():
    model = nv.ViT3D(
        nv.ViTConfig(
            in_channels=2, img_size=(16, 32, 24), patch_size=(8, 16, 4), width=32, depth=3, heads=4, num_classes=5
        )
    )
    assert model.config.grid_size == (2, 2, 6)
    assert model.pos_embed.shape == (1, 1 + 24, 32)
    names = dict(model.named_modules())
    for name in [
        "patch_embed.proj",
        "blocks.2.norm1",
        "blocks.2.attn",
        "blocks.2.norm2",
        "blocks.2.mlp",
        "norm",
        "head",
    ]:
        assert name in names
    assert model(torch.randn(3, 2, 16, 32, 24)).shape == (3, 5)


def test_exposed_attention_probabilities_match_the_fused_path():
    model = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=4).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    fused = model(x)
    seen = []
    handle = model.blocks[1].attn.probs.register_forward_hook(lambda m, i, o: seen.append(o))
    model.set_expose_attention(True)
    explicit = model(x)
    handle.remove()
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    assert seen[0].shape == (2, 4, 9, 9)
    torch.testing.assert_close(seen[0].sum(-1), torch.ones(2, 4, 9))
    model.set_expose_attention(False)
    seen.clear()
    model(x)
    assert seen == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"img_size": 8, "patch_size": 16}, "must be positive and fit"),
        ({"width": 30, "heads": 4}, "divisible by heads"),
        ({"patch_size": (8, 8)}, "3 ints"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        nv.ViTConfig(**kwargs)


def test_config_round_trips_through_a_dict():
    config = nv.ViTConfig(img_size=(16, 32, 24), patch_size=(8, 16, 4), width=32, depth=3, heads=4)
    assert nv.ViTConfig(**config.to_dict()) == config


def test_mean_pooled_variant_has_no_prefix_and_a_usable_last_block():
    model = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=2, pool="mean")
    assert model.cls_token is None and model.pos_embed.shape == (1, 8, 32)
    x = torch.randn(2, 1, 16, 16, 16)
    features = model.forward_features(x)
    torch.testing.assert_close(model(x), model.head(features.mean(1)))
    result = nv.grad_cam(model, x, "blocks.1")  # no cls token: the last block's output has a gradient
    assert result.layout.prefix == 0 and result.cam.max() > 0
    labels = [c.label for c in nv.list_targets(model, x[:1])]
    assert labels[-2:] == ["blocks.1", "norm (recommended)"]
    with pytest.raises(ValueError, match="pool must be one of 'cls', 'mean', 'attn'"):
        nv.ViTConfig(pool="max")
