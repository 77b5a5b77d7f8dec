"""User code that builds a model: ``"package.module:callable"`` names, factories and their failures.

A name read from a file is never imported on its own: user code runs only
when the caller passes it as ``factory=`` to :func:`~napari_vitcam.models.checkpoint.load_checkpoint`.
A failure inside the user's code is blamed on that code; arguments that the
callable does not take are blamed on the arguments.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any

from torch import nn

from napari_vitcam.core.errors import CheckpointError
from napari_vitcam.core.vocabulary import error_detail
from napari_vitcam.models.architectures.base import ArchitectureFamily

Factory = str | Callable[..., nn.Module]
_FACTORY_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_factory_ref(architecture: str) -> bool:
    """Whether ``architecture`` is written ``"package.module:callable"`` (and is not a ``monai:`` name)."""
    return not architecture.startswith("monai:") and bool(_FACTORY_REF.match(architecture))


def factory_label(factory: Factory) -> str:
    """How a factory is named in messages: its reference, or the callable's qualified name."""
    return factory if isinstance(factory, str) else getattr(factory, "__qualname__", repr(factory))


def import_factory(ref: str) -> Callable[..., Any]:
    """The callable ``"package.module:callable"`` names (dotted attributes allowed after the colon).

    Args:
        ref: ``"package.module:callable"``, e.g. ``"mylab.models:build_vit"``.
    """
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


def _check_signature(function: Callable[..., Any], kwargs: dict, label: str) -> None:
    """Refuse arguments the callable does not take, before calling it (a mismatch is not the factory's bug)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return  # a builtin or C callable: nothing to check up front
    try:
        signature.bind(**kwargs)
    except TypeError as error:
        shown = ", ".join(sorted(kwargs)) or "none"
        raise CheckpointError(
            f"factory {label!r} does not take the arguments it was given ({error}; given: {shown}): "
            "pass factory_kwargs that it takes, or fix the spec's arguments"
        ) from None


def call_factory(factory: Factory, kwargs: dict) -> nn.Module:
    """``factory(**kwargs)``, checked to take these arguments and to return an ``nn.Module``.

    Args:
        factory: ``"package.module:callable"`` or the callable itself.
        kwargs: the keyword arguments to call it with.
    """
    function = import_factory(factory) if isinstance(factory, str) else factory
    label = factory_label(factory)
    _check_signature(function, kwargs, label)
    return run_module_builder(
        lambda: function(**kwargs),
        f"factory {label!r}",
        on_failure="the error is in the factory's own code: fix the factory",
        on_wrong_type="make it return the model",
    )


def run_module_builder(build: Callable[[], object], what: str, *, on_failure: str, on_wrong_type: str) -> nn.Module:
    """Run user code that builds a model; a failure or a non-module becomes a one-line :class:`CheckpointError`.

    Args:
        build: the user code, called with no arguments.
        what: names the code in the message.
        on_failure: what to do when the code raises.
        on_wrong_type: what to do when it returns something other than an ``nn.Module``.
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


class UserCode(ArchitectureFamily):
    """``"package.module:callable"``: the user's code. Named in a file, it is recorded but never imported."""

    form = "'package.module:callable'"
    runs_user_code = True

    def matches(self, name: str) -> bool:
        return is_factory_ref(name)

    def build(self, name: str, arguments: dict) -> nn.Module:
        raise CheckpointError(
            f"the checkpoint was saved from user code {name!r}: pass factory={name!r} to load it "
            "(code named inside a file is never imported on its own)"
        )
