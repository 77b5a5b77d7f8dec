"""A whole pickled ``nn.Module`` (or one under a usual key): used as it is, only when the caller trusts the file.

:mod:`napari_vitcam.models.weights` unpickles a file fully only with
``trust=True``; an untrusted file never reaches this format.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from napari_vitcam.models.architectures.registry import describe
from napari_vitcam.models.formats.base import CheckpointFormat, CheckpointSource, LoadedParts, LoadRequest
from napari_vitcam.models.spec import ModelSpec
from napari_vitcam.models.spec_defaults import input_from_model
from napari_vitcam.models.state_dicts import CONTAINER_KEYS
from napari_vitcam.models.weights import WeightsFile


def pickled_module(content: object) -> nn.Module | None:
    """The module a fully unpickled file holds: itself, or under a usual key (``model``, ``state_dict``...)."""
    if isinstance(content, nn.Module):
        return content
    if isinstance(content, Mapping):
        for key in CONTAINER_KEYS:
            if isinstance(content.get(key), nn.Module):
                return content[key]
    return None


class PickledModule(CheckpointFormat):
    """A trusted file that unpickled to a whole model."""

    name = "pickled-module"

    def claims(self, source: CheckpointSource) -> bool:
        return isinstance(source, WeightsFile) and source.unpickled and pickled_module(source.content) is not None

    def load(self, source: CheckpointSource, request: LoadRequest) -> LoadedParts:
        assert isinstance(source, WeightsFile)
        module = pickled_module(source.content)
        assert module is not None
        spec = request.spec
        notes: list[str] = []
        if spec is None:
            architecture, arguments = describe(module) or ("", {})
            spec_input, notes = input_from_model(module, arguments)
            spec = ModelSpec(input=spec_input, architecture=architecture, arguments=arguments)
        return LoadedParts(module, spec, {str(source.path.resolve()): source.sha256}, self.name, notes)
