"""A bare state dict (``.pt``/``.safetensors``), with the model it fits: a factory, or a spec naming the architecture.

Also the building step the native format shares: build the model from a
factory or the spec's architecture, then load the tensors into it.
"""

from __future__ import annotations

from torch import nn

from napari_vitcam.core.errors import CheckpointError
from napari_vitcam.models.architectures.factory import Factory, call_factory, factory_label
from napari_vitcam.models.architectures.monai import is_version_drift
from napari_vitcam.models.architectures.registry import build_model
from napari_vitcam.models.formats.base import CheckpointFormat, CheckpointSource, LoadedParts, LoadRequest
from napari_vitcam.models.spec import ModelSpec
from napari_vitcam.models.spec_defaults import input_from_model
from napari_vitcam.models.state_dicts import StateDict, find_state_dict, load_state
from napari_vitcam.models.weights import WeightsFile


def build(spec: ModelSpec | None, request: LoadRequest, name: str) -> nn.Module:
    """The model the weights go into: the caller's factory, else the spec's architecture."""
    if request.factory is not None:
        kwargs = request.factory_kwargs
        if kwargs is None:
            kwargs = dict(spec.arguments) if spec else {}
        return call_factory(request.factory, kwargs)
    if spec is None or not spec.architecture:
        raise CheckpointError(
            f"{name} holds weights but no model description: pass factory='package.module:callable' "
            "(and spec=) to load it, or write it with save_checkpoint (see docs/checkpoints.md)"
        )
    try:
        return build_model(spec.architecture, spec.arguments)
    except CheckpointError as error:
        raise CheckpointError(f"{name}: {error}") from None


def architecture_label(spec: ModelSpec | None, factory: Factory | None) -> str:
    """How the model is named in messages about its fit."""
    if factory is not None:
        return factory_label(factory)
    return spec.architecture if spec is not None and spec.architecture else "the model"


def spec_for_factory(
    model: nn.Module, spec: ModelSpec | None, factory: Factory, kwargs: dict | None
) -> tuple[ModelSpec, list[str]]:
    """The spec a model built by a factory gets: the given one, else read from the model; naming the factory."""
    notes: list[str] = []
    if spec is None:
        spec_input, notes = input_from_model(model, kwargs or {})
        spec = ModelSpec(input=spec_input, arguments=dict(kwargs or {}))
    if isinstance(factory, str):
        arguments = dict(kwargs) if kwargs is not None else spec.arguments
        spec = spec.with_(architecture=factory, arguments=arguments)
    return spec, notes


def build_and_load(
    state: StateDict, spec: ModelSpec | None, request: LoadRequest, name: str
) -> tuple[nn.Module, ModelSpec, list[str]]:
    """Build the model (factory or spec), load ``state`` into it; the spec completed for a factory's model.

    Args:
        state: the file's tensors.
        spec: what is known about the model (the caller's or the file's spec).
        request: the caller's request (factory, arguments).
        name: the file's name, for messages.
    """
    model = build(spec, request, name)
    what = architecture_label(spec, request.factory)
    notes = load_state(model, state, source=name, what=what, tolerated=is_version_drift)
    if request.factory is not None:
        spec, more = spec_for_factory(model, spec, request.factory, request.factory_kwargs)
        notes += more
    assert spec is not None  # build() refused a spec-less file without a factory
    return model, spec, notes


class StateDictFile(CheckpointFormat):
    """Any other weights file: a state dict (perhaps under ``state_dict``, ``model``...) for a factory or spec."""

    name = "state-dict"

    def claims(self, source: CheckpointSource) -> bool:
        return isinstance(source, WeightsFile)

    def load(self, source: CheckpointSource, request: LoadRequest) -> LoadedParts:
        assert isinstance(source, WeightsFile)
        name = source.path.name
        state = find_state_dict(source.content, name)
        model, spec, notes = build_and_load(state, request.spec, request, name)
        return LoadedParts(model, spec, {str(source.path.resolve()): source.sha256}, self.name, notes)
