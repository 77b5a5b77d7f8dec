"""Saving and loading checkpoints: the orchestration, and the checks every loaded model passes.

Loading asks the formats of :mod:`napari_vitcam.models.formats.registry` in
order (a weights file is read once, safely, by :mod:`.weights`, so no file
runs code unless the caller passes ``trust=True``), then finishes the model
the same way whatever its format: on the device, in eval mode, weights
finite, the spec completed and checked against the model, the target layer
discovered when the spec names none. Saving writes the native format
(:mod:`napari_vitcam.models.formats.native`) after checking that the file
will load back.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from napari_vitcam.core.errors import CheckpointError, DeviceError, InputError, TargetLayerError, VitcamError
from napari_vitcam.core.vocabulary import one_line
from napari_vitcam.engine.introspect import resolve_module
from napari_vitcam.engine.targets import TargetCandidate, recommended_target
from napari_vitcam.models.architectures.factory import Factory
from napari_vitcam.models.architectures.registry import FAMILIES, build_model, describe, family_of
from napari_vitcam.models.formats.base import LoadedParts, LoadRequest
from napari_vitcam.models.formats.native import FORMAT, FORMAT_VERSION, SUFFIXES, write_native
from napari_vitcam.models.formats.registry import format_for
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.models.spec import ModelSpec
from napari_vitcam.models.spec_defaults import (
    channels_from,
    class_count,
    complete_spec,
    input_from_model,
    pre_activation_layer,
    spatial_size_from,
)
from napari_vitcam.models.state_dicts import check_finite, compare_keys, key_error
from napari_vitcam.models.targets import targets_for
from napari_vitcam.models.weights import read_weights

__all__ = ["FORMAT", "FORMAT_VERSION", "SAVE_SUFFIXES", "load_checkpoint", "save_checkpoint"]

SAVE_SUFFIXES = SUFFIXES


# -- checks shared by saving and loading ---------------------------------------------------------


def _layer_problem(model: nn.Module, name: str | None, what: str) -> str | None:
    if name is None:
        return None
    try:
        resolve_module(model, name, what)
    except TargetLayerError as error:
        return str(error)
    return None


def _class_problem(model: nn.Module, spec: ModelSpec) -> str | None:
    """Why the spec's class names do not fit the model's head, or None."""
    if not spec.class_names:
        return None
    count = class_count(model, spec.score_layer or pre_activation_layer(model))
    if count is None or count == len(spec.class_names):
        return None
    return (
        f"the spec names {len(spec.class_names)} classes but the model's head has {count} outputs: "
        "give one class name per output"
    )


# -- saving --------------------------------------------------------------------------------------


def _spec_to_save(model: nn.Module, spec: ModelSpec | None, name: str) -> ModelSpec:
    described = describe(model)
    if (spec is None or not spec.architecture) and described is None:
        forms = ", ".join(f.form for f in FAMILIES[:-1]) + f" or {FAMILIES[-1].form}"
        raise CheckpointError(
            f"cannot save {name}: the spec names no architecture; set architecture to {forms} and its arguments"
        )
    if spec is None:
        assert described is not None
        spec_input, notes = input_from_model(model, described[1])
        if notes:
            raise CheckpointError(
                f"cannot save {name}: the model does not say what input size it takes: "
                "pass a spec with input=InputSpec(spatial_size=...)"
            )
        spec = ModelSpec(input=spec_input)
    if not spec.architecture:
        assert described is not None
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


def _check_fits_model(model: nn.Module, spec: ModelSpec, name: str) -> None:
    """Refuse a spec naming layers the model lacks, or class names its head does not have."""
    for layer, what in ((spec.score_layer, "score layer"), (spec.target_layer, "target layer")):
        problem = _layer_problem(model, layer, what)
        if problem is not None:
            raise CheckpointError(f"cannot save {name}: {problem}")
    problem = _class_problem(model, spec)
    if problem is not None:
        raise CheckpointError(f"cannot save {name}: {problem}")


def _check_rebuilds(spec: ModelSpec, state: dict[str, torch.Tensor], name: str) -> None:
    """Refuse to write a file whose spec would not rebuild the model being saved."""
    if family_of(spec.architecture).runs_user_code:
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


def _check_reads_back(spec: ModelSpec, name: str) -> None:
    """Refuse a spec whose JSON would not be read back as the same spec."""
    try:
        again = ModelSpec.from_json(spec.to_json())
    except CheckpointError as error:
        raise CheckpointError(f"cannot save {name}: {error}") from None
    if again != spec or again.arguments != spec.arguments:
        raise CheckpointError(
            f"cannot save {name}: the spec's arguments do not survive JSON (tuples or non-string keys?): "
            "use lists and string keys"
        )


def save_checkpoint(path: str | Path, model: nn.Module, spec: ModelSpec | None = None) -> Path:
    """Write ``model``'s weights and ``spec`` as one native checkpoint file that is checked to load back.

    The format follows the suffix: ``.safetensors`` (preferred) or ``.pt``/``.pth``.
    ``spec.architecture`` is ``"ViT3D"``, ``"monai:<ClassName>"`` or
    ``"package.module:callable"``, and ``spec.arguments`` its constructor's
    keyword arguments; for a :class:`~napari_vitcam.models.architectures.vit3d.ViT3D`
    both are read from the model when left empty. Without a spec, the input
    channels and size are read from the model too (refused when it does not
    say). Before anything is written, the spec must rebuild the model, agree
    with its declared input, name layers it has and one class name per output,
    and the weights must be finite.

    Args:
        path: the file to write.
        model: the model.
        spec: its spec (see ``docs/checkpoints.md``).

    Returns:
        The path written.
    """
    path = Path(path).expanduser()
    if path.suffix.lower() not in SAVE_SUFFIXES:
        raise CheckpointError(f"cannot save to {path.name}: use a .safetensors (preferred) or .pt file name")
    if not path.parent.is_dir():
        raise CheckpointError(f"cannot save {path.name}: the folder {path.parent} does not exist; create it first")
    spec = _spec_to_save(model, spec, path.name)
    family_of(spec.architecture)
    _check_input(model, spec, path.name)
    _check_fits_model(model, spec, path.name)
    _check_reads_back(spec, path.name)
    check_finite(model, f"cannot save {path.name}", "the model's weights are damaged; save a model with finite weights")
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    _check_rebuilds(spec, state, path.name)
    write_native(path, state, spec)
    return path


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


def _discover_targets(loaded: LoadedModel, source: str) -> tuple[str, list[TargetCandidate]]:
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
    return name, candidates


def _finish(parts: LoadedParts, *, source: str, path: Path, device: str | torch.device) -> LoadedModel:
    check_finite(parts.model, source, "the checkpoint's weights are damaged; use another checkpoint")
    model = _to_device(parts.model, device).eval()
    spec = complete_spec(model, parts.spec)
    for layer, what in ((spec.score_layer, "score layer"), (spec.target_layer, "target layer")):
        problem = _layer_problem(model, layer, what)
        if problem is not None:
            raise CheckpointError(f"{source}: {problem}")
    problem = _class_problem(model, spec)
    if problem is not None:
        raise CheckpointError(f"{source}: {problem}")
    loaded = LoadedModel(
        model=model, spec=spec, source=path, sha256=parts.files, warnings=list(parts.warnings), format=parts.format
    )
    if spec.target_layer is None:
        name, candidates = _discover_targets(loaded, source)
        loaded.spec = spec.with_(target_layer=name)
        loaded.targets = tuple(candidates)
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

    The formats of :mod:`napari_vitcam.models.formats.registry` are asked in
    order: a MONAI bundle folder; a trusted whole pickled module; a native
    checkpoint (see :func:`save_checkpoint`); a weights file (a state dict in
    ``.pt``/``.safetensors``) with ``factory`` or a ``spec`` naming the architecture.

    Args:
        path: the file or bundle folder.
        trust: allow full unpickling (a whole pickled ``nn.Module``) and running
            a bundle's code; only for files from a trusted source.
        factory: ``"package.module:callable"`` or a callable that builds the model,
            called with ``factory_kwargs``, else the spec's arguments.
        factory_kwargs: the factory's keyword arguments.
        spec: replaces what the file says about the model.
        device: where the model goes.

    Returns:
        The model, its spec (always naming a target layer: the file's, else the
        one target discovery recommends, with the candidates in ``targets``),
        the files read and their digests, and what loading tolerated in
        ``warnings`` (also issued as Python warnings).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"no file or folder at {path}: check the path")
    request = LoadRequest(trust=trust, factory=factory, factory_kwargs=factory_kwargs, spec=spec)
    if path.is_dir():
        parts = format_for(path).load(path, request)
        source = f"bundle {path.name}"
    else:
        weights = read_weights(path, trust=trust)
        parts = format_for(weights).load(weights, request)
        source = path.name
    return _finish(parts, source=source, path=path, device=device)
