"""Specs are checked for types and ranges when a file is loaded and before one is saved: never read as
something else, never a raw Python error, never an allocation the machine refuses."""

import json
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from tests.models.small_models import CONFIG, monai_vit_arguments

from napari_vitcam.core.errors import CheckpointError
from napari_vitcam.models import limits
from napari_vitcam.models.architectures.vit3d import ViTConfig
from napari_vitcam.models.checkpoint import load_checkpoint, save_checkpoint
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization

SPEC = ModelSpec(
    input=InputSpec(spatial_size=(16, 16, 16), normalization=Normalization("window", window=(-100, 300))),
    architecture="ViT3D",
    arguments=CONFIG,
)


def write_native(path, model, spec: dict):
    """A native file written by hand, with any spec (save_checkpoint would refuse the wrong ones)."""
    metadata = {"format": "napari-vitcam", "version": "1", "spec": json.dumps(spec)}
    save_file(dict(model.state_dict()), str(path), metadata=metadata)
    return path


def load_error(tmp_path, model, spec: dict) -> str:
    path = write_native(tmp_path / "model.safetensors", model, spec)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("model.safetensors: ")
    return message


def changed(**changes) -> dict:
    """SPEC as JSON, with fields replaced; dotted keys reach into input and input.normalization."""
    data = SPEC.to_dict()
    for key, value in changes.items():
        node = data
        *parents, leaf = key.split("__")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return data


def test_the_reference_spec_loads(tmp_path, vit):
    loaded = load_checkpoint(write_native(tmp_path / "model.safetensors", vit, SPEC.to_dict()))
    assert loaded.spec.input == SPEC.input


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"input__normalization__clip": "false"}, "normalization.clip must be true or false"),
        ({"input__normalization__nonzero": "false"}, "normalization.nonzero must be true or false"),
        ({"input__normalize_first": "false"}, "input.normalize_first must be true or false"),
        ({"input__channels": "1"}, "input.channels must be a whole number (not a string), got '1'"),
        ({"input__channels": 1.5}, "input.channels must be a whole number"),
        ({"input__normalization__out_range": [0]}, "normalization.out_range must be two finite numbers"),
        ({"input__normalization__out_range": [1, 1]}, "normalization.out_range must be two different numbers"),
        ({"input__normalization__window": [0, float("inf")]}, "normalization.window must be two finite numbers"),
        ({"input__normalization__window": [float("nan"), 1]}, "normalization.window must be two finite numbers"),
        ({"input__normalization__window": [300, -100]}, "window [lo, hi] with lo < hi"),
        ({"input__normalization__kind": "clahe"}, "normalisation must be one of none, zscore, minmax, window"),
        ({"input__spatial_size": [16, 16]}, "spatial_size must be 3 positive ints"),
        ({"input__spatial_size": [16, "16", 16]}, "spatial_size must be 3 positive ints"),
        ({"input__spatial_size": [100000, 100000, 100000]}, f"({limits.MAX_SIDE} voxels along an axis"),
        ({"input__resize_mode": "cubic"}, "resize_mode must be one of trilinear, area, nearest"),
        ({"input__orientation": "RAR"}, "input.orientation must be three axis codes, one of R/L, A/P and S/I"),
        ({"input__orientation": ["R", "A", "S"]}, "input.orientation must be three axis codes"),
        ({"input__spacing": [1, 1]}, "input.spacing must be three voxel sizes in mm, each above 0 and at most 1000"),
        ({"input__spacing": [1, 0, 1]}, "input.spacing must be three voxel sizes in mm"),
        ({"input__spacing": [1, "1", 1]}, "input.spacing must be three voxel sizes in mm"),
        ({"input__spacing": [1, 1, float("inf")]}, "input.spacing must be three voxel sizes in mm"),
        ({"input__spacing": [1, 1, 5000]}, "input.spacing must be three voxel sizes in mm"),
        ({"input__fit": "pad"}, "input.fit must be one of resize, crop_or_pad, got 'pad'"),
        ({"input__fit": "crop_or_pad", "input__resize_mode": "area"}, "with fit crop_or_pad use trilinear or nearest"),
        ({"class_names": "ab"}, "class_names must be a list of strings, got 'ab'"),
        ({"class_names": ["a", 2]}, "class_names must be a list of strings"),
        ({"class_names": ["a", "b", "c"]}, "the spec names 3 classes but the model's head has 2 outputs"),
        ({"class_names": ["a"]}, "the spec names 1 classes but the model's head has 2 outputs"),
        ({"target_layer": 5}, "target_layer must be a module name"),
        ({"score_layer": ""}, "score_layer must be a module name"),
        ({"arguments": [1, 2]}, "arguments must be an object of named values"),
        ({"input__normalisation": {}}, "unknown field input.normalisation"),
        ({"classes": ["a", "b"]}, "unknown field classes"),
        ({"input": [16, 16, 16]}, "the spec's input must be a JSON object"),
        ({"arguments": {**CONFIG, "width": 200000, "heads": 1}}, "width must be an int from 1 to 16384"),
        ({"arguments": {**CONFIG, "img_size": 1024, "patch_size": 1}}, "tokens, over the bound 262144"),
        ({"arguments": {**CONFIG, "img_size": 4096}}, "is over 2048 voxels along an axis"),
        ({"arguments": {**CONFIG, "depth": "2"}}, "depth must be an int"),
    ],
)
def test_wrong_specs_are_refused_on_load(tmp_path, vit, changes, expected):
    assert expected in load_error(tmp_path, vit, changed(**changes))


def test_an_input_without_spatial_size_is_refused(tmp_path, vit):
    data = changed()
    del data["input"]["spatial_size"]
    assert "the spec's input has no spatial_size" in load_error(tmp_path, vit, data)


def test_a_spec_without_input_takes_the_models_size_and_says_so(tmp_path, vit):
    data = changed()
    del data["input"]
    path = write_native(tmp_path / "model.safetensors", vit, data)
    with pytest.warns(UserWarning, match=r"the spec has no input: using the model's input size \(16, 16, 16\)"):
        loaded = load_checkpoint(path)
    assert loaded.spec.input == InputSpec(channels=1, spatial_size=(16, 16, 16))  # not 64³
    assert any("no intensity normalisation" in w for w in loaded.warnings)


FACTORY_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class TinyCNN(nn.Module):
        def __init__(self, width=4, num_classes=2):
            super().__init__()
            self.stem = nn.Conv3d(1, width, 3, padding=1)
            self.head = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.head(torch.relu(self.stem(x)).mean(dim=(2, 3, 4)))
    """
)


@pytest.fixture
def cnn_factory(tmp_path, monkeypatch):
    (tmp_path / "vitcam_spec_checks_cnn.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "vitcam_spec_checks_cnn", raising=False)
    yield "vitcam_spec_checks_cnn:TinyCNN"
    sys.modules.pop("vitcam_spec_checks_cnn", None)


def test_a_spec_without_input_for_a_model_without_a_size_is_refused(tmp_path, cnn_factory):
    import vitcam_spec_checks_cnn as module

    path = write_native(
        tmp_path / "cnn.safetensors", module.TinyCNN(), {"architecture": cnn_factory, "arguments": {"width": 4}}
    )
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, factory=cnn_factory)
    assert str(caught.value) == (
        "cnn.safetensors: the spec has no input and the model does not say what input size it takes: "
        "add input (channels, spatial_size, normalization) to the spec (see docs/checkpoints.md)"
    )


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: Normalization(clip="false"), "normalization.clip must be true or false"),
        (lambda: Normalization("window", window=(0, float("inf"))), "window must be two finite numbers"),
        (lambda: Normalization(out_range=(0,)), "out_range must be two finite numbers"),
        (lambda: InputSpec(channels="1"), "input.channels must be a whole number"),
        (lambda: InputSpec(spatial_size=(100000, 100000, 100000)), "is over the bounds"),
        (lambda: InputSpec(spatial_size=(2048, 2048, 2048)), f"{limits.MAX_VOXELS:,} in all"),
        (lambda: InputSpec(normalize_first="no"), "input.normalize_first must be true or false"),
        (lambda: InputSpec(orientation="XYZ"), "input.orientation must be three axis codes"),
        (lambda: InputSpec(spacing=(1.0, -1.0, 1.0)), "input.spacing must be three voxel sizes in mm"),
        (lambda: InputSpec(spacing=(True, 1, 1)), "input.spacing must be three voxel sizes in mm"),
        (lambda: InputSpec(fit=None), "input.fit must be one of resize, crop_or_pad"),
        (lambda: ModelSpec(class_names="ab"), "class_names must be a list of strings"),
        (lambda: ViTConfig(width=200000, heads=1), "width must be an int from 1 to 16384"),
        (lambda: ViTConfig(mlp_ratio=float("inf")), "mlp_ratio must be a number in (0.0, 64.0]"),
    ],
)
def test_wrong_specs_cannot_be_made_in_code(make, expected):
    with pytest.raises((CheckpointError, ValueError), match=expected.replace("(", r"\(").replace(")", r"\)")) as caught:
        make()
    assert "\n" not in str(caught.value)


def save_error(tmp_path, model, spec) -> str:
    path = tmp_path / "model.safetensors"
    with pytest.raises(CheckpointError) as caught:
        save_checkpoint(path, model, spec)
    assert not path.exists()
    message = str(caught.value)
    assert "\n" not in message and message.startswith("cannot save model.safetensors: ")
    return message


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (SPEC.with_(target_layer="blocks.1.norm"), "the model has no module named 'blocks.1.norm'; did you mean"),
        (SPEC.with_(score_layer="classifier"), "the model has no module named 'classifier'"),
        (SPEC.with_(class_names=("a", "b", "c")), "the spec names 3 classes but the model's head has 2 outputs"),
        (SPEC.with_(arguments={**CONFIG, "note": float("nan")}), "the spec's arguments must be JSON values"),
        (SPEC.with_(arguments={**CONFIG, "pairs": (1, 2)}), "do not survive JSON"),
    ],
)
def test_save_refuses_what_would_not_load_back(tmp_path, vit, spec, expected):
    assert expected in save_error(tmp_path, vit, spec)


def test_save_refuses_non_finite_weights(tmp_path, vit):
    with torch.no_grad():
        vit.blocks[1].mlp[0].weight[0, 0] = float("nan")
    message = save_error(tmp_path, vit, SPEC)
    assert "the tensor blocks.1.mlp.0.weight holds non-finite values (NaN or Inf)" in message


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_load_refuses_non_finite_weights(tmp_path, vit, value):
    state = dict(vit.state_dict())
    state["blocks.0.attn.qkv.weight"] = state["blocks.0.attn.qkv.weight"].clone()
    state["blocks.0.attn.qkv.weight"][3, 2] = value
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, spec=SPEC)
    assert str(caught.value) == (
        "weights.pt: the tensor blocks.0.attn.qkv.weight holds non-finite values (NaN or Inf): "
        "the checkpoint's weights are damaged; use another checkpoint"
    )


def test_every_saved_spec_loads_back_unchanged(tmp_path, vit):
    spec = SPEC.with_(class_names=("healthy", "lesion"), target_layer="blocks.0.norm1")
    loaded = load_checkpoint(save_checkpoint(tmp_path / "model.pt", vit, spec))
    assert loaded.spec == spec and loaded.spec.arguments["width"] == 16


def test_the_frame_fields_survive_saving_and_loading(tmp_path, vit):
    frame_input = InputSpec(spatial_size=(16, 16, 16), orientation="las", spacing=(1, 1.5, 2), fit="crop_or_pad")
    spec = SPEC.with_(input=frame_input, class_names=("healthy", "lesion"), target_layer="blocks.0.norm1")
    assert spec.input.orientation == "LAS" and spec.input.spacing == (1.0, 1.5, 2.0)
    assert ModelSpec.from_json(spec.to_json()) == spec
    loaded = load_checkpoint(save_checkpoint(tmp_path / "model.safetensors", vit, spec))
    assert loaded.spec == spec


def test_a_spec_written_before_the_frame_fields_loads_unchanged(tmp_path, vit):
    old = SPEC.to_dict()
    for key in ("orientation", "spacing", "fit"):
        del old["input"][key]
    loaded = load_checkpoint(write_native(tmp_path / "model.safetensors", vit, old))
    assert loaded.spec.input == SPEC.input
    assert (loaded.spec.input.orientation, loaded.spec.input.spacing, loaded.spec.input.fit) == (None, None, "resize")


def test_a_monai_spec_without_input_takes_img_size(tmp_path):
    pytest.importorskip("monai", reason="the monai extra is not installed")
    pytest.importorskip("einops", reason="MONAI's ViT needs einops")
    from monai.networks.nets import ViT

    arguments = monai_vit_arguments(in_channels=2, img_size=[16, 24, 16])
    torch.manual_seed(0)
    path = write_native(
        tmp_path / "vit.safetensors", ViT(**arguments), {"architecture": "monai:ViT", "arguments": arguments}
    )
    with pytest.warns(UserWarning, match=r"using the model's input size \(16, 24, 16\) and 2 channel"):
        loaded = load_checkpoint(path)
    assert loaded.spec.input == InputSpec(channels=2, spatial_size=(16, 24, 16))
