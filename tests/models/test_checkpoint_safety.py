"""Files that would run code are refused unless trusted; every failure is one line saying what to do."""

import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from tests.models.small_models import CONFIG, SPEC
from torch import nn

from napari_vitcam.core.errors import CheckpointError, UntrustedCheckpointError
from napari_vitcam.models.checkpoint import load_checkpoint, save_checkpoint
from napari_vitcam.models.spec import InputSpec


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_pickled_module_is_refused_by_default(tmp_path, vit):
    path = tmp_path / "whole.pt"
    torch.save(vit, path)
    with pytest.raises(UntrustedCheckpointError) as error:
        load_checkpoint(path)
    message = one_line(error)
    assert message.startswith(
        "whole.pt holds a pickled napari_vitcam.models.architectures.vit3d.ViT3D, not only weights"
    )
    assert "unpickling it can run arbitrary code" in message
    assert "load it with trust=True" in message and "state_dict or .safetensors" in message


def test_trusted_pickled_module_loads(tmp_path, vit):
    path = tmp_path / "whole.pt"
    torch.save(vit, path)
    loaded = load_checkpoint(path, trust=True)
    x = torch.randn(1, 1, 16, 16, 16)
    assert loaded.format == "pickled-module" and not loaded.model.training
    assert torch.equal(loaded.model(x), vit(x))
    assert loaded.spec.architecture == "ViT3D" and loaded.spec.input.spatial_size == (16, 16, 16)
    assert loaded.spec.target_layer == "blocks.1.norm1"


def test_state_dict_loads_without_trust(tmp_path, vit):
    path = tmp_path / "weights.pt"
    torch.save(vit.state_dict(), path, _use_new_zipfile_serialization=False)  # the legacy format too
    loaded = load_checkpoint(path, spec=SPEC)
    x = torch.randn(1, 1, 16, 16, 16)
    assert torch.equal(loaded.model(x), vit(x))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_is_refused(tmp_path, vit, how):
    model = nn.Sequential(nn.Conv3d(1, 2, 3), nn.ReLU())
    scripted = torch.jit.script(model) if how == "script" else torch.jit.trace(model, torch.randn(1, 1, 4, 4, 4))
    path = tmp_path / "model.pt"
    scripted.save(str(path))
    for trust in (False, True):
        with pytest.raises(CheckpointError) as error:
            load_checkpoint(path, trust=trust)
        message = one_line(error)
        assert "model.pt is a TorchScript archive, and Grad-CAM's hooks do not work on ScriptModules" in message
        assert "save the eager model's weights instead" in message


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("garbage.pt", b"this is not a checkpoint at all", "unrecognised content"),
        ("empty.safetensors", b"", "the file is empty"),
    ],
)
def test_unreadable_files(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = one_line(error)
    assert f"{name} cannot be read as" in message and reason in message
    assert "it may be truncated or corrupt; download or save it again" in message


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncated_files(tmp_path, vit, suffix):
    path = save_checkpoint(tmp_path / f"model{suffix}", vit)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert "it may be truncated or corrupt" in one_line(error)


def test_unknown_extension(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert one_line(error) == (
        "model.onnx has an unknown extension .onnx: give a .safetensors or .pt/.pth file, or a MONAI bundle folder"
    )


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"no file or folder at .*nowhere\.pt: check the path"):
        load_checkpoint(tmp_path / "nowhere.pt")


def test_missing_and_unexpected_keys_are_named(tmp_path, vit):
    state = dict(vit.state_dict())
    del state["blocks.0.norm1.weight"]
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "weights.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, spec=SPEC)
    assert one_line(error) == (
        "weights.safetensors does not fit ViT3D: 1 missing keys (blocks.0.norm1.weight) and "
        "1 unexpected keys (extra.weight): check that the architecture and its arguments match the file"
    )


def test_many_missing_keys_name_the_first_three(tmp_path, vit):
    state = {k: v for k, v in vit.state_dict().items() if not k.startswith("blocks.1.")}
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    with pytest.raises(
        CheckpointError,
        match=r"12 missing keys \(blocks\.1\.norm1\.weight, blocks\.1\.norm1\.bias, "
        r"blocks\.1\.attn\.qkv\.weight and 9 more\)",
    ):
        load_checkpoint(path, spec=SPEC)


def test_shape_mismatch_names_both_shapes(tmp_path, vit):
    path = tmp_path / "weights.pt"
    torch.save(vit.state_dict(), path)
    spec = SPEC.with_(arguments={**CONFIG, "num_classes": 5})
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, spec=spec)
    assert one_line(error) == (
        "weights.pt does not fit ViT3D: head.weight has shape (2, 16) in the file but (5, 16) in the model "
        "(2 tensors differ): check the architecture's arguments (sizes, number of classes)"
    )


def test_weights_without_a_model_description(tmp_path, vit):
    path = tmp_path / "weights.pt"
    torch.save(vit.state_dict(), path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert "weights.pt holds weights but no model description: pass factory='package.module:callable'" in one_line(
        error
    )


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "numbers.pt"
    torch.save([1, 2, 3], path)
    expected = r"numbers\.pt holds an object of type list, not a state dict: save model\.state_dict\(\)"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path)


def test_newer_format_version(tmp_path, vit):
    path = tmp_path / "future.pt"
    torch.save({"format": "napari-vitcam", "version": 7, "spec": SPEC.to_json(), "state_dict": vit.state_dict()}, path)
    with pytest.raises(
        CheckpointError, match=r"future\.pt was written by a newer napari-vitcam \(format version 7\): upgrade"
    ):
        load_checkpoint(path)


def test_native_file_with_a_broken_spec(tmp_path, vit):
    path = tmp_path / "broken.safetensors"
    save_file(dict(vit.state_dict()), str(path), metadata={"format": "napari-vitcam", "version": "1", "spec": "{"})
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert one_line(error).startswith("broken.safetensors: the model spec is not valid JSON")


def test_unknown_architecture(tmp_path, vit):
    path = tmp_path / "weights.pt"
    torch.save(vit.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"unknown architecture 'resnet 50': write 'ViT3D', 'monai:<ClassName>'"):
        load_checkpoint(path, spec=SPEC.with_(architecture="resnet 50"))


def test_named_target_layer_must_exist(tmp_path, vit):
    path = tmp_path / "model.safetensors"
    spec = SPEC.with_(target_layer="blocks.1.norm")
    metadata = {"format": "napari-vitcam", "version": "1", "spec": spec.to_json()}
    save_file(dict(vit.state_dict()), str(path), metadata=metadata)  # written by hand: save_checkpoint refuses it
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors: the model has no module named 'blocks\.1\.norm'; did you mean"
    ):
        load_checkpoint(path)


def test_spec_that_does_not_fit_the_model(tmp_path, vit):
    path = tmp_path / "weights.pt"
    torch.save(vit.state_dict(), path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, spec=SPEC.with_(input=InputSpec(spatial_size=(32, 32, 32))))
    message = one_line(error)
    assert message.startswith("weights.pt: the model fails on an input of shape (1, 1, 32, 32, 32)")
    assert message.endswith("check that the checkpoint's input spec (channels, spatial size) matches its model")


FACTORY_SOURCE = textwrap.dedent(
    """
    from torch import nn

    def broken(**kwargs):
        raise RuntimeError("no weights for you")

    def not_a_model(**kwargs):
        return 42

    NOT_CALLABLE = 3
    """
)


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        ("no colon here", "factory 'no colon here' must be written 'package.module:callable'"),
        (
            "vitcam_no_such_module:build",
            "cannot import 'vitcam_no_such_module' for factory 'vitcam_no_such_module:build' "
            "(No module named 'vitcam_no_such_module'): install it or add its folder to PYTHONPATH",
        ),
        ("vitcam_test_safety_factories:nope", "module 'vitcam_test_safety_factories' has no 'nope'"),
        ("vitcam_test_safety_factories:NOT_CALLABLE", "names an object of type int, not a callable"),
        (
            "vitcam_test_safety_factories:broken",
            "failed (RuntimeError: no weights for you): the error is in the factory's own code: fix the factory",
        ),
        (
            "vitcam_test_safety_factories:not_a_model",
            "returned an object of type int, not a torch nn.Module: make it return the model",
        ),
    ],
)
def test_factory_errors(tmp_path, vit, monkeypatch, factory, expected):
    (tmp_path / "vitcam_test_safety_factories.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "vitcam_test_safety_factories", raising=False)
    path = tmp_path / "weights.pt"
    torch.save(vit.state_dict(), path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, factory=factory)
    assert expected in one_line(error)
    sys.modules.pop("vitcam_test_safety_factories", None)
