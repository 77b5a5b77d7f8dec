"""Building a model from its architecture's name and arguments.

An architecture is written as one of:

* ``"ViT3D"``: the reference ViT, arguments are :class:`~napari_vitcam.models.architectures.vit3d.ViTConfig` fields;
* ``"monai:<ClassName>"``: a network of ``monai.networks.nets`` (the ``monai`` extra),
  arguments are its constructor's;
* ``"package.module:callable"``: user code that returns an ``nn.Module``. A name
  read from a file is never imported on its own: the caller passes it as
  ``factory`` to say the code is theirs to run.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from torch import nn

from napari_vitcam.core.errors import CheckpointError
from napari_vitcam.core.vocabulary import error_detail
from napari_vitcam.models.architectures.vit3d import ViT3D, ViTConfig

REFERENCE_VIT = "ViT3D"
MONAI_PREFIX = "monai:"
Factory = str | Callable[..., nn.Module]
_FACTORY_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_factory_ref(architecture: str) -> bool:
    return not architecture.startswith(MONAI_PREFIX) and bool(_FACTORY_REF.match(architecture))


def check_architecture(architecture: str) -> None:
    """Refuse a name that is none of the three forms."""
    if architecture == REFERENCE_VIT or is_factory_ref(architecture):
        return
    if architecture.startswith(MONAI_PREFIX) and architecture[len(MONAI_PREFIX) :].isidentifier():
        return
    raise CheckpointError(
        f"unknown architecture {architecture!r}: write 'ViT3D', 'monai:<ClassName>' or 'package.module:callable'"
    )


def build_reference_vit(arguments: dict) -> ViT3D:
    try:
        return ViT3D(ViTConfig(**arguments))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"cannot build ViT3D from its arguments ({error}): fix the spec's arguments") from None


def build_model(architecture: str, arguments: dict) -> nn.Module:
    """The model ``architecture`` names, built from ``arguments``; never imports user code."""
    check_architecture(architecture)
    if architecture == REFERENCE_VIT:
        return build_reference_vit(arguments)
    if architecture.startswith(MONAI_PREFIX):
        from napari_vitcam.models.architectures.monai import build_network

        return build_network(architecture[len(MONAI_PREFIX) :], arguments)
    raise CheckpointError(
        f"the checkpoint was saved from user code {architecture!r}: pass factory={architecture!r} to load it "
        "(code named inside a file is never imported on its own)"
    )


def import_factory(ref: str) -> Callable[..., Any]:
    """The callable ``"package.module:callable"`` names (dotted attributes allowed after the colon)."""
    if not _FACTORY_REF.match(ref):
        raise CheckpointError(
            f"factory {ref!r} must be written 'package.module:callable', e.g. 'mypackage.models:build_vit'"
        )
    module_name, attribute = ref.split(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise CheckpointError(
            f"cannot import {module_name!r} for factory {ref!r} ({error}): install it or add its folder to PYTHONPATH"
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise CheckpointError(f"module {module_name!r} has no {attribute!r} for factory {ref!r}: check the name")
        target = getattr(target, part)
    if not callable(target):
        raise CheckpointError(
            f"factory {ref!r} names an object of type {type(target).__name__}, not a callable: name a function or class"
        )
    return target


def call_factory(factory: Factory, kwargs: dict) -> nn.Module:
    """``factory(**kwargs)``, checked to return an ``nn.Module``."""
    function = import_factory(factory) if isinstance(factory, str) else factory
    label = factory if isinstance(factory, str) else getattr(factory, "__qualname__", repr(factory))
    shown = ", ".join(sorted(kwargs)) or "none"
    return run_module_builder(
        lambda: function(**kwargs),
        f"factory {label!r}",
        on_failure=f"check its arguments (given: {shown})",
        on_wrong_type="make it return the model",
    )


def run_module_builder(build: Callable[[], object], what: str, *, on_failure: str, on_wrong_type: str) -> nn.Module:
    """Run user code that builds a model; a failure or a non-module becomes a one-line :class:`CheckpointError`.

    ``what`` names the code in the message; ``on_failure`` and ``on_wrong_type``
    say what to do about each case.
    """
    try:
        model = build()
    except Exception as error:  # user code: any failure becomes a message
        raise CheckpointError(f"{what} failed ({error_detail(error)}): {on_failure}") from None
    if not isinstance(model, nn.Module):
        raise CheckpointError(
            f"{what} returned an object of type {type(model).__name__}, not a torch nn.Module: {on_wrong_type}"
        )
    return model


def describe(model: nn.Module) -> tuple[str, dict] | None:
    """``(architecture, arguments)`` read from the model itself, where it says (the reference ViT does)."""
    if isinstance(model, ViT3D):
        return REFERENCE_VIT, model.config.to_dict()
    return None
