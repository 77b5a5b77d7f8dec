"""The napari-vitcam format: one file with the weights and a JSON model spec (``docs/checkpoints.md``).

* ``.safetensors`` (preferred): the tensors, and in the header's metadata
  ``format`` = ``"napari-vitcam"``, ``version`` and ``spec`` (JSON text);
* ``.pt``/``.pth``: ``torch.save`` of the plain dict
  ``{"format", "version", "spec", "state_dict"}``, which
  ``torch.load(weights_only=True)`` reads.

A spec without ``input`` takes the channels and size from the model (its
``img_size``, for example) with a warning that no normalisation is applied,
and is refused when the model does not say.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from napari_vitcam.core.errors import CheckpointError
from napari_vitcam.models.formats.base import CheckpointFormat, CheckpointSource, LoadedParts, LoadRequest
from napari_vitcam.models.formats.state_dict import build_and_load
from napari_vitcam.models.spec import InputSpec, ModelSpec, spec_object
from napari_vitcam.models.spec_defaults import channels_from, spatial_size_from
from napari_vitcam.models.state_dicts import StateDict, find_state_dict
from napari_vitcam.models.weights import WeightsFile

FORMAT = "napari-vitcam"
FORMAT_VERSION = 1
SUFFIXES = (".safetensors", ".pt", ".pth")


# -- reading -------------------------------------------------------------------------------------


def check_version(version: object, name: str) -> None:
    """Refuse a format version this napari-vitcam cannot read."""
    try:
        number = int(version)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise CheckpointError(f"{name} has an unreadable format version {version!r}: save it again") from None
    if number > FORMAT_VERSION:
        raise CheckpointError(
            f"{name} was written by a newer napari-vitcam (format version {number}): upgrade napari-vitcam"
        )


def read_spec(text: object, name: str) -> tuple[ModelSpec, bool]:
    """The file's spec, and whether it says what input the model takes."""
    if not isinstance(text, str):
        raise CheckpointError(f"{name} has no model spec: save it again with save_checkpoint")
    try:
        data = spec_object(text)
        return ModelSpec.from_dict(data), "input" in data
    except CheckpointError as error:
        raise CheckpointError(f"{name}: {error}") from None


def is_native(weights: WeightsFile) -> bool:
    """Whether a file read is in this format (its metadata or its dict says so)."""
    if weights.kind == "safetensors":
        return weights.metadata.get("format") == FORMAT
    return isinstance(weights.content, Mapping) and weights.content.get("format") == FORMAT


def native_contents(weights: WeightsFile) -> tuple[ModelSpec, bool, StateDict]:
    """The spec, whether it names the input, and the state dict of a native file."""
    name = weights.path.name
    if weights.kind == "safetensors":
        check_version(weights.metadata.get("version"), name)
        spec, has_input = read_spec(weights.metadata.get("spec"), name)
        return spec, has_input, weights.content
    content = weights.content
    check_version(content.get("version"), name)
    spec, has_input = read_spec(content.get("spec"), name)
    return spec, has_input, find_state_dict(content.get("state_dict"), name)


def _input_from_the_model(model: torch.nn.Module, spec: ModelSpec, name: str) -> tuple[ModelSpec, str]:
    size = spatial_size_from(model, spec.arguments)
    if size is None:
        raise CheckpointError(
            f"{name}: the spec has no input and the model does not say what input size it takes: "
            "add input (channels, spatial_size, normalization) to the spec (see docs/checkpoints.md)"
        )
    channels = channels_from(model, spec.arguments) or 1
    note = (
        f"{name}: the spec has no input: using the model's input size {size} and {channels} channel(s), "
        "with no intensity normalisation; add input to the spec"
    )
    return spec.with_(input=InputSpec(channels=channels, spatial_size=size)), note


class NativeFile(CheckpointFormat):
    """A file written by :func:`~napari_vitcam.models.checkpoint.save_checkpoint`."""

    name = "native"

    def claims(self, source: CheckpointSource) -> bool:
        return isinstance(source, WeightsFile) and is_native(source)

    def load(self, source: CheckpointSource, request: LoadRequest) -> LoadedParts:
        assert isinstance(source, WeightsFile)
        name = source.path.name
        file_spec, has_input, state = native_contents(source)
        spec = request.spec or file_spec
        model, spec, notes = build_and_load(state, spec, request, name)
        if request.spec is None and not has_input:
            spec, note = _input_from_the_model(model, spec, name)
            notes.append(note)
        return LoadedParts(model, spec, {str(source.path.resolve()): source.sha256}, self.name, notes)


# -- writing -------------------------------------------------------------------------------------


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a partial file, then rename; the file gets the mode any new file would get
    (safetensors writes owner-only files)."""
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        partial.touch()
        mode = partial.stat().st_mode & 0o777  # what the umask gives a new file here
        write(partial)
        partial.chmod(mode)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_native(path: Path, state: StateDict, spec: ModelSpec) -> None:
    """Write ``state`` and ``spec`` in this format; the suffix picks safetensors or a ``.pt`` dict.

    Args:
        path: the file to write (``.safetensors``, ``.pt`` or ``.pth``).
        state: CPU tensors, contiguous.
        spec: the spec, already checked.
    """
    text = spec.to_json()
    if path.suffix.lower() == ".safetensors":
        metadata = {"format": FORMAT, "version": str(FORMAT_VERSION), "spec": text}
        write_atomically(path, lambda target: save_file(state, str(target), metadata=metadata))
    else:
        payload = {"format": FORMAT, "version": FORMAT_VERSION, "spec": text, "state_dict": state}
        write_atomically(path, lambda target: torch.save(payload, target))
