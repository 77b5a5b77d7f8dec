"""Native checkpoints, state dicts with a spec or a factory: what is saved is what loads."""

import hashlib
import sys
import textwrap

import pytest
import torch

import napari_vitcam as nv
from napari_vitcam.core.errors import CheckpointError, DeviceError
from napari_vitcam.models.architectures.vit3d import ViT3D, ViTConfig
from napari_vitcam.models.checkpoint import load_checkpoint, save_checkpoint
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization

CONFIG = {"img_size": 16, "patch_size": 8, "width": 16, "depth": 2, "heads": 2, "num_classes": 3}
FACTORY_MODULE = "vitcam_test_factories"
FACTORY_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class TinyCNN(nn.Module):
        def __init__(self, width=4, num_classes=2):
            super().__init__()
            self.stem = nn.Conv3d(1, width, 3, padding=1)
            self.stage = nn.Conv3d(width, 2 * width, 3, stride=2, padding=1)
            self.head = nn.Linear(2 * width, num_classes)

        def forward(self, x):
            x = torch.relu(self.stage(torch.relu(self.stem(x))))
            return self.head(x.mean(dim=(2, 3, 4)))


    def build(width=4, num_classes=2):
        return TinyCNN(width, num_classes)


    def broken(**kwargs):
        raise RuntimeError("no weights for you")


    def not_a_model(**kwargs):
        return 42
    """
)


@pytest.fixture
def vit():
    torch.manual_seed(0)
    return ViT3D(ViTConfig(**CONFIG)).eval()


@pytest.fixture
def x():
    return torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / f"{FACTORY_MODULE}.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, FACTORY_MODULE, raising=False)
    yield f"{FACTORY_MODULE}:build"
    sys.modules.pop(FACTORY_MODULE, None)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_native_round_trip_gives_identical_logits(tmp_path, vit, x, suffix):
    spec = ModelSpec(
        input=InputSpec(
            channels=1, spatial_size=(16, 16, 16), normalization=Normalization("window", window=(-50, 250))
        ),
        class_names=("healthy", "benign", "malignant"),
        target_layer="blocks.0.norm1",
    )
    path = save_checkpoint(tmp_path / f"model{suffix}", vit, spec)
    loaded = load_checkpoint(path)

    assert isinstance(loaded, nv.LoadedModel) and loaded.format == "native"
    assert torch.equal(loaded.model(x), vit(x))
    assert not loaded.model.training
    assert loaded.spec.class_names == ("healthy", "benign", "malignant")
    assert loaded.spec.target_layer == "blocks.0.norm1"
    assert loaded.spec.input == spec.input
    assert loaded.spec.architecture == "ViT3D"
    assert loaded.spec.arguments["width"] == 16 and loaded.spec.arguments["img_size"] == [16, 16, 16]
    assert loaded.sha256 == {str(path.resolve()): sha256(path)}
    assert loaded.source == path
    assert loaded.warnings == []


def test_pt_checkpoint_reads_with_weights_only(tmp_path, vit):
    path = save_checkpoint(tmp_path / "model.pt", vit)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "napari-vitcam" and payload["version"] == 1
    assert ModelSpec.from_json(payload["spec"]).architecture == "ViT3D"


def test_plain_vit_gets_defaults_from_the_model(tmp_path, vit):
    loaded = load_checkpoint(save_checkpoint(tmp_path / "model.safetensors", vit))
    assert loaded.spec.class_names == ("class 0", "class 1", "class 2")
    assert loaded.spec.target_layer == "blocks.1.norm1"  # recommended for a cls-token ViT
    assert loaded.spec.score_layer is None
    assert loaded.spec.input.spatial_size == (16, 16, 16) and loaded.spec.input.channels == 1


def test_state_dict_with_a_spec_naming_the_architecture(tmp_path, vit, x):
    path = tmp_path / "weights.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in vit.state_dict().items()}}, path)
    spec = ModelSpec(input=InputSpec(spatial_size=(16, 16, 16)), architecture="ViT3D", arguments=CONFIG)
    with pytest.warns(UserWarning, match="removed the prefix 'module.'"):
        loaded = load_checkpoint(path, spec=spec)
    assert loaded.format == "state-dict"
    assert torch.equal(loaded.model(x), vit(x))


def test_factory_with_a_pt_state_dict(tmp_path, factories):
    import vitcam_test_factories as module

    torch.manual_seed(0)
    model = module.build(width=4, num_classes=3).eval()
    path = tmp_path / "cnn.pt"
    torch.save(model.state_dict(), path)
    x = torch.randn(2, 1, 12, 12, 12)

    loaded = load_checkpoint(
        path,
        factory=factories,
        factory_kwargs={"width": 4, "num_classes": 3},
        spec=ModelSpec(input=InputSpec(spatial_size=(12, 12, 12))),
    )
    assert torch.equal(loaded.model(x), model(x))
    assert loaded.spec.architecture == factories
    assert loaded.spec.arguments == {"width": 4, "num_classes": 3}
    assert loaded.spec.class_names == ("class 0", "class 1", "class 2")
    assert loaded.spec.target_layer == "stage"  # the CNN's last stage with a map
    assert loaded.sha256 == {str(path.resolve()): sha256(path)}


def test_factory_with_a_safetensors_state_dict_and_a_callable(tmp_path, factories):
    import vitcam_test_factories as module
    from safetensors.torch import save_file

    model = module.build().eval()
    path = tmp_path / "cnn.safetensors"
    save_file(model.state_dict(), str(path))
    with pytest.warns(UserWarning, match="input size"):
        loaded = load_checkpoint(path, factory=module.build)
    x = torch.randn(1, 1, 8, 8, 8)
    assert torch.equal(loaded.model(x), model(x))
    assert loaded.spec.input.channels == 1  # read from the first Conv3d


def test_native_file_from_user_code_needs_the_factory_named(tmp_path, factories):
    import vitcam_test_factories as module

    model = module.build(width=4, num_classes=2).eval()
    spec = ModelSpec(input=InputSpec(spatial_size=(8, 8, 8)), architecture=factories, arguments={"width": 4})
    path = save_checkpoint(tmp_path / "cnn.safetensors", model, spec)
    with pytest.raises(CheckpointError, match=f"pass factory='{factories}' to load it"):
        load_checkpoint(path)
    loaded = load_checkpoint(path, factory=factories)  # arguments come from the file
    x = torch.randn(1, 1, 8, 8, 8)
    assert torch.equal(loaded.model(x), model(x))


def test_saving_without_an_architecture_is_refused(tmp_path, factories):
    import vitcam_test_factories as module

    with pytest.raises(CheckpointError, match="the spec names no architecture"):
        save_checkpoint(tmp_path / "cnn.safetensors", module.build())


def test_saving_checks_the_spec_rebuilds_the_model(tmp_path, vit):
    spec = ModelSpec(input=InputSpec(spatial_size=(16, 16, 16)), architecture="ViT3D", arguments={**CONFIG, "depth": 3})
    expected = r"does not fit ViT3D built from the spec's arguments: 12 missing keys \(blocks\.2\.norm1\.weight, "
    with pytest.raises(CheckpointError, match=expected):
        save_checkpoint(tmp_path / "model.safetensors", vit, spec)
    assert not (tmp_path / "model.safetensors").exists()


def test_saving_checks_the_input_size(tmp_path, vit):
    with pytest.raises(
        CheckpointError, match=r"spatial_size \(64, 64, 64\) differs from the model's input size \(16, 16, 16\)"
    ):
        save_checkpoint(tmp_path / "model.safetensors", vit, ModelSpec(architecture="ViT3D"))


def test_saving_to_an_unknown_suffix_is_refused(tmp_path, vit):
    with pytest.raises(CheckpointError, match=r"cannot save to model\.onnx: use a \.safetensors"):
        save_checkpoint(tmp_path / "model.onnx", vit)


@pytest.mark.parametrize("device", ["cuda:99", "warp-drive"])
def test_unavailable_device(tmp_path, vit, device):
    path = save_checkpoint(tmp_path / "model.safetensors", vit)
    with pytest.raises(DeviceError, match="use 'cpu'"):
        load_checkpoint(path, device=device)


def test_loaded_model_is_on_the_requested_device(tmp_path, vit):
    loaded = load_checkpoint(save_checkpoint(tmp_path / "model.safetensors", vit), device=torch.device("cpu"))
    assert {p.device.type for p in loaded.model.parameters()} == {"cpu"}


def test_public_names():
    for name in (
        "load_checkpoint",
        "save_checkpoint",
        "LoadedModel",
        "ModelSpec",
        "InputSpec",
        "Normalization",
        "targets_for",
    ):
        assert name in nv.__all__ and hasattr(nv, name)


def test_saved_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    model = ViT3D(img_size=16, patch_size=8, width=32, depth=1, heads=2)
    probe = tmp_path / "probe"
    probe.touch()
    usual = stat.S_IMODE(os.stat(probe).st_mode)
    for suffix in (".safetensors", ".pt"):
        path = save_checkpoint(tmp_path / f"model{suffix}", model)
        assert stat.S_IMODE(os.stat(path).st_mode) == usual, suffix
