"""One registry of architecture families and one of checkpoint formats: each name and each source finds its
one handler there, and messages list what the registries hold."""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from napari_vitcam.core.errors import CheckpointError
from napari_vitcam.models.architectures.base import ArchitectureFamily
from napari_vitcam.models.architectures.factory import UserCode
from napari_vitcam.models.architectures.monai import MonaiNetwork
from napari_vitcam.models.architectures.registry import FAMILIES, build_model, describe, family_of
from napari_vitcam.models.architectures.vit3d import ReferenceViT, ViT3D, ViTConfig
from napari_vitcam.models.checkpoint import save_checkpoint
from napari_vitcam.models.formats.base import CheckpointFormat, LoadedParts, LoadRequest
from napari_vitcam.models.formats.monai_bundle.format import MonaiBundle
from napari_vitcam.models.formats.native import NativeFile
from napari_vitcam.models.formats.pickled_module import PickledModule
from napari_vitcam.models.formats.registry import FORMATS, format_for
from napari_vitcam.models.formats.state_dict import StateDictFile
from napari_vitcam.models.spec import InputSpec, ModelSpec
from napari_vitcam.models.weights import read_weights

CONFIG = {"img_size": 16, "patch_size": 8, "width": 16, "depth": 1, "heads": 2, "num_classes": 2}


@pytest.mark.parametrize(
    ("name", "family"),
    [("ViT3D", ReferenceViT), ("monai:ViT", MonaiNetwork), ("mylab.models:build", UserCode)],
)
def test_each_name_has_one_family(name, family):
    assert isinstance(family_of(name), family)
    assert sum(f.matches(name) for f in FAMILIES) == 1
    assert all(isinstance(f, ArchitectureFamily) for f in FAMILIES)


def test_an_unknown_name_lists_the_forms_of_every_family():
    with pytest.raises(CheckpointError) as caught:
        family_of("resnet 50")
    assert str(caught.value) == (
        "unknown architecture 'resnet 50': write 'ViT3D', 'monai:<ClassName>' or 'package.module:callable'"
    )


def test_user_code_is_never_built_from_a_name():
    assert family_of("os:system").runs_user_code
    with pytest.raises(CheckpointError, match=r"pass factory='os:system' to load it"):
        build_model("os:system", {})


def test_the_reference_vit_describes_itself_and_rebuilds():
    model = ViT3D(ViTConfig(**CONFIG))
    name, arguments = describe(model)
    rebuilt = build_model(name, arguments)
    assert name == "ViT3D" and rebuilt.config == model.config
    assert describe(nn.Linear(2, 2)) is None


def test_a_model_over_the_size_bound_is_refused_before_it_is_allocated():
    pytest.importorskip("monai", reason="the monai extra is not installed")
    pytest.importorskip("einops", reason="MONAI's ViT needs einops")
    arguments = {
        "in_channels": 1,
        "img_size": 16,
        "patch_size": 8,
        "hidden_size": 65536,
        "mlp_dim": 262144,
        "num_layers": 24,
        "num_heads": 2,
        "classification": True,
    }
    with pytest.raises(CheckpointError, match=r"monai:ViT built from these arguments would hold [\d,]+ values, over"):
        build_model("monai:ViT", arguments)


def test_formats_are_asked_in_their_order(tmp_path):
    assert [type(f) for f in FORMATS] == [MonaiBundle, PickledModule, NativeFile, StateDictFile]
    assert all(isinstance(f, CheckpointFormat) for f in FORMATS)
    model = ViT3D(ViTConfig(**CONFIG))
    spec = ModelSpec(input=InputSpec(spatial_size=(16, 16, 16)))
    native = read_weights(save_checkpoint(tmp_path / "model.safetensors", model, spec))
    save_file(dict(model.state_dict()), str(tmp_path / "bare.safetensors"))
    bare = read_weights(tmp_path / "bare.safetensors")
    torch.save(model, tmp_path / "whole.pt")
    whole = read_weights(tmp_path / "whole.pt", trust=True)
    assert isinstance(format_for(native), NativeFile)
    assert isinstance(format_for(bare), StateDictFile)
    assert isinstance(format_for(whole), PickledModule)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"folder empty is not a MONAI bundle"):
        format_for(empty)


def test_a_format_returns_typed_parts(tmp_path):
    model = ViT3D(ViTConfig(**CONFIG))
    save_file(dict(model.state_dict()), str(tmp_path / "bare.safetensors"))
    weights = read_weights(tmp_path / "bare.safetensors")
    request = LoadRequest(
        spec=ModelSpec(input=InputSpec(spatial_size=(16, 16, 16)), architecture="ViT3D", arguments=CONFIG)
    )
    parts = StateDictFile().load(weights, request)
    assert isinstance(parts, LoadedParts) and parts.format == "state-dict"
    assert parts.files == {str((tmp_path / "bare.safetensors").resolve()): weights.sha256}
    assert isinstance(parts.model, ViT3D) and parts.spec.architecture == "ViT3D"
