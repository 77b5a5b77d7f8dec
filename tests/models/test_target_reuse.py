"""Loading a checkpoint runs the model once to find its targets, and the front end reuses what it found."""

import threading

import pytest
import torch
from tests.models.small_models import CONFIG, SPEC
from torch import nn

from napari_vitcam.models.architectures.vit3d import ViT3D, ViTConfig
from napari_vitcam.models.checkpoint import load_checkpoint, save_checkpoint
from napari_vitcam.models.targets import targets_for


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "model.safetensors", ViT3D(ViTConfig(**CONFIG)), SPEC)


def count_forwards(model: nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    calls = [0]

    def hook(module, inputs):
        calls[0] += 1

    return calls, model.register_forward_pre_hook(hook)


def test_loading_keeps_the_candidates_it_probed(saved):
    loaded = load_checkpoint(saved)
    assert loaded.targets is not None
    assert loaded.spec.target_layer == "blocks.1.norm1"
    assert [c.name for c in loaded.targets if c.recommended] == ["blocks.1.norm1"]
    calls, handle = count_forwards(loaded.model)
    try:
        fresh = targets_for(loaded)
    finally:
        handle.remove()
    assert calls[0] == 1  # a fresh probe runs the model; the kept candidates are what it finds
    assert list(loaded.targets) == fresh


def test_a_named_target_layer_needs_no_probe(tmp_path):
    torch.manual_seed(0)
    path = save_checkpoint(
        tmp_path / "named.safetensors", ViT3D(ViTConfig(**CONFIG)), SPEC.with_(target_layer="blocks.0.norm1")
    )
    assert load_checkpoint(path).targets is None


jobs = pytest.importorskip("napari_vitcam._napari.jobs", reason="the GUI front end needs napari and Qt")


def test_the_front_end_reuses_the_candidates_without_running_the_model(saved):
    loaded = load_checkpoint(saved)
    calls, handle = count_forwards(loaded.model)
    try:
        candidates = jobs._probe_targets(loaded)
    finally:
        handle.remove()
    assert calls[0] == 0
    assert candidates == targets_for(loaded)


def test_the_front_end_probes_a_model_whose_load_did_not(tmp_path):
    torch.manual_seed(0)
    path = save_checkpoint(
        tmp_path / "named.safetensors", ViT3D(ViTConfig(**CONFIG)), SPEC.with_(target_layer="blocks.0.norm1")
    )
    loaded = load_checkpoint(path)
    calls, handle = count_forwards(loaded.model)
    try:
        candidates = jobs._probe_targets(loaded)
    finally:
        handle.remove()
    assert calls[0] == 1 and [c.name for c in candidates if c.recommended] == ["blocks.1.norm1"]


def test_a_gui_load_runs_the_model_once(saved):
    """The whole load job (read, discover the target, list the candidates) runs the model's forward once."""
    calls = [0]

    def hook(module, inputs):
        if isinstance(module, ViT3D):
            calls[0] += 1

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        ready = jobs.load_task(saved)(lambda stage: None, threading.Event())
    finally:
        handle.remove()
    assert calls[0] == 1
    assert ready.targets == list(ready.loaded.targets)
