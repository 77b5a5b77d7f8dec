"""MONAI networks by class name, MONAI bundle folders and key drift between MONAI versions."""

import json
import sys
import warnings

import pytest
import torch

pytest.importorskip("monai", reason="the monai extra is not installed")
pytest.importorskip("einops", reason="MONAI's ViT needs einops")

from monai.networks.blocks.transformerblock import TransformerBlock
from monai.networks.nets import ResNet, ViT
from tests.models.small_models import monai_vit_arguments

from napari_vitcam import grad_cam
from napari_vitcam.core.errors import CheckpointError, MissingExtraError, UntrustedCheckpointError
from napari_vitcam.models.checkpoint import load_checkpoint, save_checkpoint
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization

VIT_ARGS = monai_vit_arguments(num_layers=2, num_classes=3)
RESNET_ARGS = {
    "block": "basic",
    "layers": [1, 1, 1, 1],
    "block_inplanes": [4, 8, 16, 32],
    "n_input_channels": 1,
    "num_classes": 2,
}


@pytest.fixture
def vit():
    torch.manual_seed(0)
    return ViT(**VIT_ARGS).eval()


@pytest.fixture
def x():
    return torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))


def write_bundle(root, config, weights, metadata=None, config_name="inference.json"):
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    if config_name.endswith(".json"):
        (root / "configs" / config_name).write_text(json.dumps(config))
    else:
        import yaml

        (root / "configs" / config_name).write_text(yaml.safe_dump(config))
    if metadata is not None:
        (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
    torch.save(weights, root / "models" / "model.pt")
    return root


def vit_config(**preprocessing):
    return {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "num_classes": 3,
        "network_def": {
            "_target_": "ViT",
            **{k: v for k, v in VIT_ARGS.items() if k != "num_classes"},
            "num_classes": "@num_classes",
        },
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": ["image"]},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": -100,
                    "a_max": 300,
                    "b_min": 0.0,
                    "b_max": 1.0,
                    "clip": True,
                },
                {"_target_": "Resized", "keys": "image", "spatial_size": [16, 16, 16], "mode": "trilinear"},
            ],
        },
        **preprocessing,
    }


METADATA = {
    "network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [16, 16, 16]}},
        "outputs": {
            "pred": {
                "type": "probabilities",
                "num_channels": 3,
                "channel_def": {"0": "normal", "1": "benign", "2": "malignant"},
            }
        },
    }
}


def test_monai_vit_by_class_name_round_trip(tmp_path, vit, x):
    spec = ModelSpec(input=InputSpec(spatial_size=(16, 16, 16)), architecture="monai:ViT", arguments=VIT_ARGS)
    loaded = load_checkpoint(save_checkpoint(tmp_path / "vit.safetensors", vit, spec))

    assert type(loaded.model) is ViT and not loaded.model.training
    assert torch.equal(loaded.model(x)[0], vit(x)[0])
    assert loaded.spec.score_layer == "classification_head.0"  # before the Tanh
    assert loaded.spec.target_layer == "blocks.1.norm1"
    assert loaded.spec.class_names == ("class 0", "class 1", "class 2")

    result = grad_cam(loaded.model, x, loaded.spec.target_layer, score_layer=loaded.spec.score_layer)
    assert torch.allclose(torch.tanh(result.logits), vit(x)[0], atol=1e-6)  # explained from the pre-activation logits
    assert result.cam.shape == (2, 16, 16, 16) and bool((result.cam > 0).any())


def test_monai_vit_state_dict_with_a_spec(tmp_path, vit, x):
    path = tmp_path / "vit.pt"
    torch.save(vit.state_dict(), path)
    spec = ModelSpec(input=InputSpec(spatial_size=(16, 16, 16)), architecture="monai:ViT", arguments=VIT_ARGS)
    loaded = load_checkpoint(path, spec=spec)
    assert torch.equal(loaded.model(x)[0], vit(x)[0])


def test_unknown_monai_network_name(tmp_path, vit):
    path = tmp_path / "vit.pt"
    torch.save(vit.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"MONAI has no network named 'Vit': did you mean ViT"):
        load_checkpoint(path, spec=ModelSpec(architecture="monai:Vit", arguments=VIT_ARGS))


def test_two_dimensional_monai_network_is_refused(tmp_path, vit):
    path = tmp_path / "vit.pt"
    torch.save(vit.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"spatial_dims=2: napari-vitcam explains 3-D networks only"):
        load_checkpoint(path, spec=ModelSpec(architecture="monai:ViT", arguments={**VIT_ARGS, "spatial_dims": 2}))


def test_bundle_folder(tmp_path, vit, x):
    root = write_bundle(tmp_path / "vit_bundle", vit_config(), vit.state_dict(), METADATA)
    loaded = load_checkpoint(root)

    assert loaded.format == "monai-bundle"
    assert torch.equal(loaded.model(x)[0], vit(x)[0])
    spec = loaded.spec
    assert spec.architecture == "monai:ViT" and spec.arguments["num_classes"] == 3
    assert spec.class_names == ("normal", "benign", "malignant")
    assert spec.input.spatial_size == (16, 16, 16) and spec.input.channels == 1
    assert spec.input.normalization == Normalization("window", window=(-100, 300), out_range=(0, 1), clip=True)
    assert spec.input.resize_mode == "trilinear" and spec.input.normalize_first
    assert spec.score_layer == "classification_head.0" and spec.target_layer == "blocks.1.norm1"
    assert set(loaded.sha256) == {
        str((root / "configs" / "inference.json").resolve()),
        str((root / "configs" / "metadata.json").resolve()),
        str((root / "models" / "model.pt").resolve()),
    }
    assert loaded.warnings == []

    resaved = load_checkpoint(save_checkpoint(tmp_path / "native.safetensors", loaded.model, loaded.spec))
    assert resaved.spec == loaded.spec
    assert torch.equal(resaved.model(x)[0], vit(x)[0])


def test_bundle_preprocessing_decides_size_and_order(tmp_path):
    torch.manual_seed(0)
    net = ResNet(**RESNET_ARGS).eval()
    config = {
        "network_def": {"_target_": "monai.networks.nets.ResNet", **RESNET_ARGS},
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": ["image", "label"]},
                {"_target_": "Spacingd", "keys": ["image"], "pixdim": [1, 1, 1]},
                {"_target_": "Resized", "keys": "image", "spatial_size": [24, 32, 24]},
                {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True},
                {"_target_": "Resized", "keys": "label", "spatial_size": [8, 8, 8]},
            ],
        },
    }
    metadata = {
        "network_data_format": {
            "inputs": {"image": {"num_channels": 1, "spatial_shape": [48, 48, 48]}},
            "outputs": {"pred": {"channel_def": {"0": "no", "1": "yes"}}},
        }
    }
    root = write_bundle(tmp_path / "cnn_bundle", config, {"model": net.state_dict()}, metadata)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Spacingd is read into the spec, not skipped
        loaded = load_checkpoint(root)
    spec = loaded.spec
    assert spec.input.spacing == (1.0, 1.0, 1.0) and spec.input.fit == "resize"
    assert spec.input.spatial_size == (24, 32, 24)  # the Resize, not metadata's spatial_shape
    assert spec.input.normalization == Normalization("zscore", nonzero=True)
    assert spec.input.resize_mode == "area"  # MONAI Resize's default mode
    assert not spec.input.normalize_first
    assert spec.class_names == ("no", "yes")
    assert spec.target_layer in {"layer3", "layer4"} and spec.architecture == "monai:ResNet"
    x = torch.randn(1, 1, 24, 32, 24)
    assert torch.equal(loaded.model(x), net(x))


def frame_bundle(tmp_path, transforms, name="frame_bundle"):
    torch.manual_seed(0)
    net = ResNet(**RESNET_ARGS).eval()
    config = {
        "network_def": {"_target_": "monai.networks.nets.ResNet", **RESNET_ARGS},
        "preprocessing": {"_target_": "Compose", "transforms": transforms},
    }
    return write_bundle(tmp_path / name, config, {"model": net.state_dict()})


def test_bundle_orientation_spacing_window_and_pad_or_crop_are_read_into_the_spec(tmp_path):
    transforms = [
        {"_target_": "LoadImaged", "keys": ["image", "label"]},
        {"_target_": "EnsureChannelFirstd", "keys": ["image", "label"]},
        {"_target_": "Orientationd", "keys": ["image", "label"], "axcodes": "RAS"},
        {
            "_target_": "monai.transforms.Spacingd",
            "keys": ["image", "label"],
            "pixdim": [1.5, 1.5, 2.0],
            "mode": ["bilinear", "nearest"],
        },
        {
            "_target_": "ScaleIntensityRanged",
            "keys": "image",
            "a_min": -57,
            "a_max": 164,
            "b_min": 0,
            "b_max": 1,
            "clip": True,
        },
        {"_target_": "ResizeWithPadOrCropd", "keys": ["image", "label"], "spatial_size": [32, 40, 24]},
    ]
    root = frame_bundle(tmp_path, transforms)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = load_checkpoint(root).spec
    assert spec.input.orientation == "RAS" and spec.input.spacing == (1.5, 1.5, 2.0)
    assert spec.input.fit == "crop_or_pad" and spec.input.spatial_size == (32, 40, 24)
    assert spec.input.resize_mode == "trilinear"  # the image's bilinear, not the label's nearest
    assert spec.input.normalization == Normalization("window", window=(-57.0, 164.0), out_range=(0.0, 1.0), clip=True)
    assert spec.input.normalize_first


def test_bundle_array_transforms_are_read_too(tmp_path):
    transforms = [
        {"_target_": "LoadImage", "image_only": True},
        {"_target_": "Orientation", "axcodes": "lps"},
        {"_target_": "Spacing", "pixdim": 2.0, "mode": "nearest"},
        {"_target_": "Resize", "spatial_size": [16, 16, 16], "mode": "trilinear"},
        {"_target_": "ScaleIntensityRange", "a_min": 0, "a_max": 100},
    ]
    spec = load_checkpoint(frame_bundle(tmp_path, transforms)).spec
    assert (spec.input.orientation, spec.input.spacing, spec.input.fit) == ("LPS", (2.0, 2.0, 2.0), "resize")
    assert spec.input.resize_mode == "trilinear" and not spec.input.normalize_first
    assert spec.input.normalization == Normalization("window", window=(0.0, 100.0), clip=False)


@pytest.mark.parametrize(
    ("transform", "reason"),
    [
        ({"_target_": "Spacingd", "keys": "image", "pixdim": [1, 1, 0]}, r"Spacingd? to \[1, 1, 0\]"),
        ({"_target_": "Spacingd", "keys": "image", "pixdim": [1, 1, 1], "diagonal": True}, "diagonal=True"),
        ({"_target_": "Spacingd", "keys": "image", "pixdim": [1, 1, 1], "padding_mode": "zeros"}, "padding_mode"),
        ({"_target_": "Orientationd", "keys": "image", "axcodes": "RAR"}, "not three axis codes"),
        ({"_target_": "ResizeWithPadOrCropd", "keys": "image", "spatial_size": [8, 8, 8], "mode": "edge"}, "constant"),
    ],
)
def test_bundle_frame_transforms_that_cannot_be_read_are_said(tmp_path, transform, reason):
    transforms = [transform, {"_target_": "Resized", "keys": "image", "spatial_size": [16, 16, 16]}]
    with pytest.warns(UserWarning, match=f"preprocessing not understood and not applied: .*{reason}"):
        spec = load_checkpoint(frame_bundle(tmp_path, transforms)).spec
    assert (spec.input.orientation, spec.input.spacing, spec.input.fit) == (None, None, "resize")


def test_yaml_bundle_without_metadata(tmp_path, vit, x):
    config = vit_config()
    config["preprocessing"]["transforms"][2] = {
        "_target_": "ScaleIntensityd",
        "keys": "image",
        "minv": -1.0,
        "maxv": 1.0,
    }
    root = write_bundle(tmp_path / "yaml_bundle", config, vit.state_dict(), config_name="inference.yaml")
    loaded = load_checkpoint(root)
    assert loaded.spec.input.normalization == Normalization("minmax", out_range=(-1, 1))
    assert loaded.spec.class_names == ("class 0", "class 1", "class 2")
    assert torch.equal(loaded.model(x)[0], vit(x)[0])


def drifted_state(vit, *, old_cross_attention: bool, drop_norm_cross_attn: bool):
    state = dict(vit.state_dict())
    if drop_norm_cross_attn:
        state = {k: v for k, v in state.items() if ".norm_cross_attn." not in k}
    if old_cross_attention:
        block = TransformerBlock(16, 32, 2, with_cross_attention=True)
        for i in range(VIT_ARGS["num_layers"]):
            for key, value in block.state_dict().items():
                if key.startswith("cross_attn."):
                    state[f"blocks.{i}.{key}"] = value
    return state


@pytest.mark.parametrize(
    ("old_cross_attention", "drop_norm_cross_attn", "expected"),
    [
        (True, False, r"10 keys in the file: blocks\.\*\.cross_attn\.out_proj\.weight"),
        (
            False,
            True,
            r"4 keys absent from the file, left at their initial values: blocks\.\*\.norm_cross_attn\.weight",
        ),
    ],
)
def test_drifted_keys_load_with_a_warning(tmp_path, vit, x, old_cross_attention, drop_norm_cross_attn, expected):
    state = drifted_state(vit, old_cross_attention=old_cross_attention, drop_norm_cross_attn=drop_norm_cross_attn)
    root = write_bundle(tmp_path / "drifted", vit_config(), state, METADATA)
    with pytest.warns(UserWarning, match=expected):
        loaded = load_checkpoint(root)
    assert len(loaded.warnings) == 1 and "ignored key drift between library versions" in loaded.warnings[0]
    assert torch.equal(loaded.model(x)[0], vit(x)[0])


def test_bundle_code_needs_trust(tmp_path, vit, x):
    config = vit_config()
    config["network_def"]["num_classes"] = "$1 + 2"
    root = write_bundle(tmp_path / "code_bundle", config, vit.state_dict(), METADATA)
    with pytest.raises(UntrustedCheckpointError, match=r"network_def evaluates Python \('\$1 \+ 2'\).*trust=True"):
        load_checkpoint(root)
    loaded = load_checkpoint(root, trust=True)
    assert torch.equal(loaded.model(x)[0], vit(x)[0])
    assert loaded.spec.architecture == "" and loaded.spec.input.spatial_size == (16, 16, 16)


@pytest.mark.parametrize(
    ("network_def", "message"),
    [
        ("$1 / 0", r"bundle bad's network_def failed \(RuntimeError: .*'\$1 / 0'\): check the bundle's config"),
        ("$[1, 2]", r"bundle bad's network_def returned an object of type list, not a torch nn.Module: fix the config"),
    ],
)
def test_trusted_bundle_code_that_fails_or_builds_no_model(tmp_path, vit, network_def, message):
    config = vit_config()
    config["network_def"] = network_def
    root = write_bundle(tmp_path / "bad", config, vit.state_dict(), METADATA)
    with pytest.raises(CheckpointError, match=message) as caught:
        load_checkpoint(root, trust=True)
    assert "\n" not in str(caught.value)


def test_bundle_with_only_torchscript_weights(tmp_path, vit):
    root = write_bundle(tmp_path / "ts_bundle", vit_config(), vit.state_dict())
    (root / "models" / "model.pt").rename(root / "models" / "model.ts")
    with pytest.raises(CheckpointError, match=r"only TorchScript weights \(models/model\.ts\)"):
        load_checkpoint(root)


def test_bundle_reference_to_a_missing_id(tmp_path, vit):
    config = vit_config()
    config["network_def"]["num_classes"] = "@classes"
    root = write_bundle(tmp_path / "bad_ref", config, vit.state_dict())
    with pytest.raises(CheckpointError, match=r"refers to '@classes', which the config does not define"):
        load_checkpoint(root)


def test_bundle_with_invalid_json(tmp_path, vit):
    root = write_bundle(tmp_path / "bad_json", vit_config(), vit.state_dict())
    (root / "configs" / "inference.json").write_text('{"network_def": ')
    with pytest.raises(
        CheckpointError, match=r"inference\.json is not valid JSON \(Expecting value at line 1\): fix the file"
    ):
        load_checkpoint(root)


def test_folder_that_is_not_a_bundle(tmp_path):
    with pytest.raises(CheckpointError, match=r"is not a MONAI bundle \(no configs/inference\.json or \.yaml\)"):
        load_checkpoint(tmp_path)


def test_missing_monai_names_the_pip_command(tmp_path, vit, monkeypatch):
    spec = ModelSpec(input=InputSpec(spatial_size=(16, 16, 16)), architecture="monai:ViT", arguments=VIT_ARGS)
    path = save_checkpoint(tmp_path / "vit.safetensors", vit, spec)
    for name in [n for n in sys.modules if n == "monai" or n.startswith("monai.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(
        MissingExtraError, match=r'needs monai, which is not installed: pip install "napari-vitcam\[monai\]"'
    ):
        load_checkpoint(path)


def test_missing_pyyaml_names_the_pip_command(tmp_path, vit, monkeypatch):
    root = write_bundle(tmp_path / "yaml_bundle", vit_config(), vit.state_dict(), config_name="inference.yaml")
    monkeypatch.setitem(sys.modules, "yaml", None)
    expected = r'inference\.yaml is YAML, which needs pyyaml: pip install "napari-vitcam\[monai\]"'
    with pytest.raises(MissingExtraError, match=expected):
        load_checkpoint(root)
