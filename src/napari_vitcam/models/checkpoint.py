"""Saving and loading checkpoints: the native format, MONAI bundles, user factories.

The native format is one file with the weights and a JSON model spec
(``docs/checkpoints.md``): a ``.safetensors`` file with the spec in its
metadata, or a ``.pt`` file holding a plain dict that ``torch.load`` reads
with ``weights_only=True``. Every load goes through :mod:`.weights`, so no
file runs code unless the caller passes ``trust=True``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from napari_vitcam.core.errors import CheckpointError, DeviceError, InputError, TargetLayerError, VitcamError
from napari_vitcam.core.vocabulary import one_line
from napari_vitcam.engine.introspect import resolve_module
from napari_vitcam.engine.targets import recommended_target
from napari_vitcam.models.architectures.monai import is_version_drift
from napari_vitcam.models.architectures.registry import (
    Factory,
    build_model,
    call_factory,
    check_architecture,
    describe,
    is_factory_ref,
)
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.models.spec import ModelSpec
from napari_vitcam.models.spec_defaults import channels_from, complete_spec, input_from_model, spatial_size_from
from napari_vitcam.models.state_dicts import CONTAINER_KEYS, compare_keys, find_state_dict, key_error, load_state
from napari_vitcam.models.targets import targets_for
from napari_vitcam.models.weights import WeightsFile, read_weights, sha256_file

FORMAT = "napari-vitcam"
FORMAT_VERSION = 1
SAVE_SUFFIXES = (".safetensors", ".pt", ".pth")


# -- saving --------------------------------------------------------------------------------------


def _spec_to_save(model: nn.Module, spec: ModelSpec | None, name: str) -> ModelSpec:
    described = describe(model)
    if spec is None:
        arguments = described[1] if described is not None else {}
        spec = ModelSpec(input=input_from_model(model, arguments)[0])
    if not spec.architecture:
        if described is None:
            raise CheckpointError(
                f"cannot save {name}: the spec names no architecture; set architecture to 'ViT3D', "
                "'monai:<ClassName>' or 'package.module:callable' and its arguments"
            )
        return spec.with_(architecture=described[0], arguments=described[1])
    if described is not None and spec.architecture == described[0] and not spec.arguments:
        return spec.with_(arguments=described[1])
    return spec


def _check_input(model: nn.Module, spec: ModelSpec, name: str) -> None:
    """Refuse a spec whose input contradicts what the model declares (channels, fixed input size)."""
    channels = channels_from(model, spec.arguments)
    if channels is not None and channels != spec.input.channels:
        raise CheckpointError(
            f"cannot save {name}: the spec's input has {spec.input.channels} channels but the model takes {channels}: "
            "fix the spec's input"
        )
    size = spatial_size_from(model, spec.arguments)
    if size is not None and size != spec.input.spatial_size:
        raise CheckpointError(
            f"cannot save {name}: the spec's input spatial_size {spec.input.spatial_size} differs from the model's "
            f"input size {size}: set InputSpec(spatial_size={size})"
        )


def _check_rebuilds(spec: ModelSpec, state: dict[str, torch.Tensor], name: str) -> None:
    """Refuse to write a file whose spec would not rebuild the model being saved."""
    if is_factory_ref(spec.architecture):
        return  # user code is not run at save time
    rebuilt = build_model(spec.architecture, spec.arguments)
    error = key_error(
        compare_keys(rebuilt, state),
        f"the model being saved to {name}",
        f"{spec.architecture} built from the spec's arguments",
        "fix the spec's architecture or arguments",
    )
    if error is not None:
        raise error


def _write_atomically(path: Path, write) -> None:
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


def save_checkpoint(path: str | Path, model: nn.Module, spec: ModelSpec | None = None) -> Path:
    """Write ``model``'s weights and ``spec`` as one native checkpoint file.

    The format follows the suffix: ``.safetensors`` (preferred) or ``.pt``/``.pth``.
    ``spec.architecture`` is ``"ViT3D"``, ``"monai:<ClassName>"`` or
    ``"package.module:callable"``, and ``spec.arguments`` its constructor's
    keyword arguments; for a :class:`~napari_vitcam.models.architectures.vit3d.ViT3D` both are read from
    the model when left empty. Without a spec, the input channels and size are
    read from the model too. The file is checked to rebuild the model before it
    is written.
    """
    path = Path(path).expanduser()
    if path.suffix.lower() not in SAVE_SUFFIXES:
        raise CheckpointError(f"cannot save to {path.name}: use a .safetensors (preferred) or .pt file name")
    if not path.parent.is_dir():
        raise CheckpointError(f"cannot save {path.name}: the folder {path.parent} does not exist; create it first")
    spec = _spec_to_save(model, spec, path.name)
    check_architecture(spec.architecture)
    _check_input(model, spec, path.name)
    text = spec.to_json()
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    _check_rebuilds(spec, state, path.name)
    if path.suffix.lower() == ".safetensors":
        metadata = {"format": FORMAT, "version": str(FORMAT_VERSION), "spec": text}
        _write_atomically(path, lambda target: save_file(state, str(target), metadata=metadata))
    else:
        payload = {"format": FORMAT, "version": FORMAT_VERSION, "spec": text, "state_dict": state}
        _write_atomically(path, lambda target: torch.save(payload, target))
    return path


# -- reading native files ------------------------------------------------------------------------


def _check_version(version, name: str) -> None:
    try:
        number = int(version)
    except (TypeError, ValueError):
        raise CheckpointError(f"{name} has an unreadable format version {version!r}: save it again") from None
    if number > FORMAT_VERSION:
        raise CheckpointError(
            f"{name} was written by a newer napari-vitcam (format version {number}): upgrade napari-vitcam"
        )


def _read_spec(text, name: str) -> ModelSpec:
    if not isinstance(text, str):
        raise CheckpointError(f"{name} has no model spec: save it again with save_checkpoint")
    try:
        return ModelSpec.from_json(text)
    except CheckpointError as error:
        raise CheckpointError(f"{name}: {error}") from None


def native_contents(weights: WeightsFile) -> tuple[ModelSpec, dict[str, torch.Tensor]] | None:
    """The spec and state dict of a native file, or None when the file is not one."""
    name = weights.path.name
    if weights.kind == "safetensors":
        if weights.metadata.get("format") != FORMAT:
            return None
        _check_version(weights.metadata.get("version"), name)
        return _read_spec(weights.metadata.get("spec"), name), weights.content
    content = weights.content
    if not isinstance(content, Mapping) or content.get("format") != FORMAT:
        return None
    _check_version(content.get("version"), name)
    return _read_spec(content.get("spec"), name), find_state_dict(content.get("state_dict"), name)


def _pickled_module(content) -> nn.Module | None:
    if isinstance(content, nn.Module):
        return content
    if isinstance(content, Mapping):
        for key in CONTAINER_KEYS:
            if isinstance(content.get(key), nn.Module):
                return content[key]
    return None


# -- building ------------------------------------------------------------------------------------


def _build(spec: ModelSpec | None, factory: Factory | None, factory_kwargs: dict | None, name: str) -> nn.Module:
    if factory is not None:
        kwargs = factory_kwargs if factory_kwargs is not None else dict(spec.arguments) if spec else {}
        return call_factory(factory, kwargs)
    if spec is None or not spec.architecture:
        raise CheckpointError(
            f"{name} holds weights but no model description: pass factory='package.module:callable' "
            "(and spec=) to load it, or write it with save_checkpoint (see docs/checkpoints.md)"
        )
    return build_model(spec.architecture, spec.arguments)


def _architecture_label(spec: ModelSpec | None, factory: Factory | None) -> str:
    if isinstance(factory, str):
        return factory
    if factory is not None:
        return getattr(factory, "__qualname__", "the factory's model")
    return spec.architecture if spec is not None and spec.architecture else "the model"


def _spec_for_factory(model: nn.Module, spec: ModelSpec | None, factory: Factory | None, kwargs: dict | None):
    """The spec a file without one gets: read from the model, naming the factory."""
    notes: list[str] = []
    if spec is None:
        spec_input, notes = input_from_model(model, kwargs or {})
        spec = ModelSpec(input=spec_input, arguments=dict(kwargs or {}))
    if isinstance(factory, str):
        arguments = dict(kwargs) if kwargs is not None else spec.arguments
        spec = spec.with_(architecture=factory, arguments=arguments)
    return spec, notes


def _load_file(path: Path, trust: bool, factory: Factory | None, factory_kwargs: dict | None, spec: ModelSpec | None):
    weights = read_weights(path, trust=trust)
    files = {str(path.resolve()): weights.sha256}
    module = _pickled_module(weights.content) if weights.unpickled else None
    if module is not None:
        notes: list[str] = []
        if spec is None:
            architecture, arguments = describe(module) or ("", {})
            spec_input, notes = input_from_model(module, arguments)
            spec = ModelSpec(input=spec_input, architecture=architecture, arguments=arguments)
        return module, spec, files, notes, "pickled-module"
    native = native_contents(weights)
    if native is not None:
        file_spec, state = native
        spec = spec or file_spec
        fmt = "native"
    else:
        state = find_state_dict(weights.content, path.name)
        fmt = "state-dict"
    model = _build(spec, factory, factory_kwargs, path.name)
    what = _architecture_label(spec, factory)
    notes = load_state(model, state, source=path.name, what=what, tolerated=is_version_drift)
    if factory is not None:
        spec, more = _spec_for_factory(model, spec, factory, factory_kwargs)
        notes += more
    return model, spec, files, notes, fmt


def _load_bundle(
    folder: Path, trust: bool, factory: Factory | None, factory_kwargs: dict | None, spec: ModelSpec | None
):
    from napari_vitcam.models.formats.monai_bundle import read_bundle

    recipe = read_bundle(folder, trust=trust)
    weights = read_weights(recipe.files.weights, trust=trust)
    files = {str(p.resolve()): sha256_file(p) for p in (recipe.files.config, recipe.files.metadata) if p is not None}
    files[str(recipe.files.weights.resolve())] = weights.sha256
    model = recipe.model if factory is None else call_factory(factory, factory_kwargs or recipe.spec.arguments)
    source = f"bundle {folder.name} ({recipe.files.weights.name})"
    state = find_state_dict(weights.content, source)
    what = _architecture_label(recipe.spec, factory)
    notes = recipe.warnings + load_state(model, state, source=source, what=what, tolerated=is_version_drift)
    return model, spec or recipe.spec, files, notes, "monai-bundle"


# -- finishing -----------------------------------------------------------------------------------


def _to_device(model: nn.Module, device: str | torch.device) -> nn.Module:
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"{device!r} is not a device name: use 'cpu', 'cuda' or 'cuda:0'") from None
    try:
        return model.to(target)
    except (RuntimeError, AssertionError) as error:
        reason = one_line(error, 120)
        raise DeviceError(
            f"device {device!r} is not available here ({reason}): use 'cpu' or an available GPU"
        ) from None


def _check_layer(model: nn.Module, name: str | None, what: str, source: str) -> None:
    if name is None:
        return
    try:
        resolve_module(model, name, what)
    except TargetLayerError as error:
        raise CheckpointError(f"{source}: {error}") from None


def _discover_target(loaded: LoadedModel, source: str) -> str:
    try:
        candidates = targets_for(loaded)
    except InputError as error:  # the model fails on the input its spec describes
        raise CheckpointError(f"{source}: {error}") from None
    except VitcamError as error:
        raise CheckpointError(f"cannot find a target layer in {source}: {error}") from None
    name = recommended_target(candidates)
    if name is None:
        raise CheckpointError(
            f"found no layer in {source} whose output maps onto the input volume: name one as the spec's target_layer"
        )
    return name


def _finish(model, spec, *, source, path, files, notes, device, fmt) -> LoadedModel:
    model = _to_device(model, device).eval()
    spec = complete_spec(model, spec)
    _check_layer(model, spec.score_layer, "score layer", source)
    _check_layer(model, spec.target_layer, "target layer", source)
    loaded = LoadedModel(model=model, spec=spec, source=path, sha256=files, warnings=list(notes), format=fmt)
    if spec.target_layer is None:
        loaded.spec = spec.with_(target_layer=_discover_target(loaded, source))
    for note in loaded.warnings:
        warnings.warn(note, UserWarning, stacklevel=3)
    return loaded


def load_checkpoint(
    path: str | Path,
    *,
    trust: bool = False,
    factory: Factory | None = None,
    factory_kwargs: dict | None = None,
    spec: ModelSpec | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Load a model to explain, in eval mode on ``device``.

    ``path``: a native checkpoint (see :func:`save_checkpoint`), a MONAI bundle
    folder, or a weights file (a state dict in ``.pt``/``.safetensors``) with
    ``factory`` (``"package.module:callable"`` or a callable, called with
    ``factory_kwargs``, else the spec's arguments) or a ``spec`` naming the
    architecture. ``spec`` replaces what the file says about the model.
    ``trust=True`` allows full unpickling (a whole pickled ``nn.Module``) and
    running a bundle's code; only for files from a trusted source.

    The returned spec always names a target layer: the file's, else the one
    target discovery recommends. What loading tolerated is in ``warnings``
    (also issued as Python warnings).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"no file or folder at {path}: check the path")
    if path.is_dir():
        model, spec, files, notes, fmt = _load_bundle(path, trust, factory, factory_kwargs, spec)
        source = f"bundle {path.name}"
    else:
        model, spec, files, notes, fmt = _load_file(path, trust, factory, factory_kwargs, spec)
        source = path.name
    return _finish(model, spec, source=source, path=path, files=files, notes=notes, device=device, fmt=fmt)
