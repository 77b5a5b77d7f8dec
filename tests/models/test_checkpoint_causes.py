"""Each refusal names its real cause: a malicious or custom pickle is untrusted (not corrupt), a file is read by
its content whatever its name, a factory's own bug is blamed on the factory, and a bundle config whose references
fan out is refused instead of hanging."""

import argparse
import json
import os
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from tests.models.small_models import SPEC, monai_vit_arguments

from napari_vitcam.core.errors import CheckpointError, UntrustedCheckpointError
from napari_vitcam.models.checkpoint import load_checkpoint, save_checkpoint
from napari_vitcam.models.formats.monai_bundle.config import MAX_RESOLVED_VALUES, resolve_references
from napari_vitcam.models.weights import refused_global


class RunsACommand:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("trust", [False, True])
def test_a_pickle_that_runs_a_command_is_refused_as_unsafe_not_corrupt(tmp_path, vit, trust):
    marker = tmp_path / "ran"
    path = tmp_path / "model.pt"
    torch.save({"state_dict": vit.state_dict(), "hook": RunsACommand(marker)}, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, spec=SPEC, trust=trust)
    message = str(caught.value)
    assert "truncated or corrupt" not in message and "\n" not in message
    assert message.startswith(f"model.pt holds a pickle that calls {os.system.__module__}.system")
    assert "it is never unpickled, trusted or not" in message
    assert not marker.exists()


def test_a_pickle_with_a_custom_object_is_untrusted_and_loads_when_trusted(tmp_path, vit):
    path = tmp_path / "lightning_like.ckpt"
    torch.save({"state_dict": vit.state_dict(), "hparams": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UntrustedCheckpointError) as caught:
        load_checkpoint(path, spec=SPEC)
    message = str(caught.value)
    assert message.startswith("lightning_like.ckpt holds a pickled argparse.Namespace, not only weights")
    assert "truncated or corrupt" not in message
    loaded = load_checkpoint(path, spec=SPEC, trust=True)
    x = torch.randn(1, 1, 16, 16, 16)
    assert loaded.format == "state-dict" and torch.equal(loaded.model(x), vit(x))


def test_the_untrusted_remedy_names_every_front_ends_switch(tmp_path, vit):
    path = tmp_path / "whole.pt"
    torch.save(vit, path)
    with pytest.raises(UntrustedCheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "load it with trust=True (--trust on the command line; the plugin asks first)" in message


@pytest.mark.parametrize(
    ("message", "name", "blocked"),
    [
        (  # torch 2.6 to 2.13: a class that is not allowlisted
            "Weights only load failed. ... WeightsUnpickler error: Unsupported global: GLOBAL mylab.nets.Net was "
            "not an allowed global by default. Please use `torch.serialization.add_safe_globals([mylab.nets.Net])`",
            "mylab.nets.Net",
            False,
        ),
        (  # a blocked module (os, sys...)
            "Weights only load failed. In PyTorch 2.6, ...\n\nTrying to load unsupported GLOBAL posix.system whose "
            "module posix is blocked.\n\nCheck the documentation of torch.load",
            "posix.system",
            True,
        ),
        (  # object construction of a class that is not allowlisted
            "Can only build Tensor, Parameter, OrderedDict or types allowlisted via `add_safe_globals`, but got "
            "<class 'mylab.Thing'>",
            "object",
            False,
        ),
    ],
)
def test_refusal_wordings_are_recognised(message, name, blocked):
    refused = refused_global(message)
    assert refused is not None and refused.name == name and refused.blocked is blocked


@pytest.mark.parametrize("message", ["Unsupported operand 149", "pickle data was truncated", "String is too long"])
def test_corruption_is_not_mistaken_for_a_refused_class(message):
    assert refused_global(message) is None


@pytest.mark.parametrize("legacy", [False, True])
def test_a_pytorch_file_named_safetensors_is_read_by_its_content(tmp_path, vit, legacy):
    path = tmp_path / "weights.safetensors"
    torch.save(vit.state_dict(), path, _use_new_zipfile_serialization=not legacy)
    loaded = load_checkpoint(path, spec=SPEC)
    x = torch.randn(1, 1, 16, 16, 16)
    assert loaded.format == "state-dict" and torch.equal(loaded.model(x), vit(x))


def test_native_files_are_read_by_content_under_either_name(tmp_path, vit):
    as_pt = save_checkpoint(tmp_path / "model.pt", vit, SPEC)
    renamed = as_pt.rename(tmp_path / "model_pt.safetensors")
    as_safetensors = save_checkpoint(tmp_path / "model.safetensors", vit, SPEC)
    renamed_back = as_safetensors.rename(tmp_path / "model_st.pt")
    for path in (renamed, renamed_back):
        loaded = load_checkpoint(path)
        assert loaded.format == "native" and loaded.spec.arguments["width"] == 16


FACTORY_SOURCE = textwrap.dedent(
    """
    from torch import nn


    def build(width=4, num_classes=2):
        return nn.Sequential(nn.Conv3d(1, width, 3), nn.Flatten(), nn.LazyLinear(num_classes))


    def buggy(width=4, num_classes=2):
        layers = [nn.Conv3d(1, width, 3)]
        return nn.Sequential(*layers, nn.Linear(width, num_classes, biass=True))  # a typo: a TypeError inside
    """
)


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "vitcam_cause_factories.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "vitcam_cause_factories", raising=False)
    yield "vitcam_cause_factories"
    sys.modules.pop("vitcam_cause_factories", None)


def test_a_bug_inside_the_factory_is_blamed_on_the_factory(tmp_path, vit, factories):
    path = tmp_path / "weights.pt"
    torch.save(vit.state_dict(), path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, factory=f"{factories}:buggy", spec=SPEC.with_(arguments={"width": 4}))
    message = str(caught.value)
    assert message.startswith(f"factory '{factories}:buggy' failed (TypeError: ")
    assert "unexpected keyword argument 'biass'" in message
    assert message.endswith("the error is in the factory's own code: fix the factory")
    assert "spec" not in message


def test_arguments_the_factory_does_not_take_are_blamed_on_the_arguments(tmp_path, vit, factories):
    path = tmp_path / "weights.pt"
    torch.save(vit.state_dict(), path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, factory=f"{factories}:build", factory_kwargs={"depth": 3})
    assert str(caught.value) == (
        f"factory '{factories}:build' does not take the arguments it was given "
        "(got an unexpected keyword argument 'depth'; given: depth): "
        "pass factory_kwargs that it takes, or fix the spec's arguments"
    )


def fan_out_config(fan: int = 8, levels: int = 9) -> dict:
    """Ids whose references fan out ``fan`` ways, ``levels`` deep: a small file, fan**levels values."""
    config = {f"a{level}": [f"@a{level + 1}"] * fan for level in range(levels)}
    config[f"a{levels}"] = 1
    return config


def write_bundle(root, config, vit):
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    save_file(dict(vit.state_dict()), str(root / "models" / "model.safetensors"))
    return root


MONAI_VIT = {"_target_": "ViT", **monai_vit_arguments()}


@pytest.mark.parametrize("where", ["network_def", "preprocessing"])
def test_a_config_whose_references_fan_out_is_refused(tmp_path, vit, where):
    config = fan_out_config()
    assert len(json.dumps(config)) < 1300  # a tiny file that expands to 8**9 (134 million) values
    if where == "network_def":
        config["network_def"] = {**MONAI_VIT, "num_classes": "@a0"}
    else:  # the network is built first: the preprocessing is read after it
        pytest.importorskip("monai", reason="the monai extra is not installed")
        pytest.importorskip("einops", reason="MONAI's ViT needs einops")
        config["network_def"] = MONAI_VIT
        config["preprocessing"] = "@a0"
    root = write_bundle(tmp_path / "fan_out", config, vit)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(root)
    assert str(caught.value) == (
        f"bundle fan_out: its config's @ references expand to more than {MAX_RESOLVED_VALUES:,} values "
        "(references that fan out): simplify the bundle's config"
    )


def test_references_within_the_bound_resolve(tmp_path):
    config = fan_out_config(fan=3, levels=4)
    resolved = resolve_references("@a0", config, "bundle b")
    assert json.dumps(resolved).count("1") == 3**4


def test_references_that_loop_are_refused():
    with pytest.raises(CheckpointError, match="bundle b has references that loop: fix the bundle's config"):
        resolve_references("@a", {"a": {"b": "@a"}}, "bundle b")
