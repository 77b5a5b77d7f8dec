"""Building a model from its architecture's name and arguments: the one registry of architecture families.

An architecture is written as one of (in :data:`FAMILIES`' order):

* ``"ViT3D"``: the reference ViT, arguments are :class:`~napari_vitcam.models.architectures.vit3d.ViTConfig` fields;
* ``"monai:<ClassName>"``: a network of ``monai.networks.nets`` (the ``monai`` extra),
  arguments are its constructor's;
* ``"package.module:callable"``: user code that returns an ``nn.Module``. A name
  read from a file is never imported on its own: the caller passes it as
  ``factory`` to say the code is theirs to run.

To add a family, subclass :class:`~napari_vitcam.models.architectures.base.ArchitectureFamily`
and list an instance in :data:`FAMILIES`; nothing else needs to change.

A model built from a name is first built on PyTorch's ``meta`` device, which
allocates nothing, and refused when it would hold more than
:data:`~napari_vitcam.models.limits.MAX_PARAMETERS` values.
"""

from __future__ import annotations

import torch
from torch import nn

from napari_vitcam.core.errors import CheckpointError
from napari_vitcam.models import limits
from napari_vitcam.models.architectures.base import ArchitectureFamily
from napari_vitcam.models.architectures.factory import (
    Factory,
    UserCode,
    call_factory,
    import_factory,
    is_factory_ref,
    run_module_builder,
)
from napari_vitcam.models.architectures.monai import MonaiNetwork
from napari_vitcam.models.architectures.vit3d import ReferenceViT

#: The families, asked in order: the first whose ``matches`` accepts a name builds it.
FAMILIES: tuple[ArchitectureFamily, ...] = (ReferenceViT(), MonaiNetwork(), UserCode())

REFERENCE_VIT = ReferenceViT.NAME

__all__ = [
    "FAMILIES",
    "REFERENCE_VIT",
    "Factory",
    "build_model",
    "call_factory",
    "check_architecture",
    "describe",
    "family_of",
    "import_factory",
    "is_factory_ref",
    "run_module_builder",
]


def family_of(architecture: str) -> ArchitectureFamily:
    """The family that builds ``architecture``; refuses a name written in none of their forms.

    Args:
        architecture: the spec's architecture name.
    """
    for family in FAMILIES:
        if family.matches(architecture):
            return family
    forms = ", ".join(f.form for f in FAMILIES[:-1]) + f" or {FAMILIES[-1].form}"
    raise CheckpointError(f"unknown architecture {architecture!r}: write {forms}")


def check_architecture(architecture: str) -> None:
    """Refuse a name that no family matches."""
    family_of(architecture)


def _count_values(model: nn.Module) -> int:
    return sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())


def build_model(architecture: str, arguments: dict) -> nn.Module:
    """The model ``architecture`` names, built from ``arguments``; never imports user code.

    Args:
        architecture: a name in one of the families' forms.
        arguments: the constructor's keyword arguments.

    Raises:
        CheckpointError: unknown name, arguments that do not build it, or a model over the size bound.
    """
    family = family_of(architecture)
    with torch.device("meta"):
        probe = family.build(architecture, arguments)
    count = _count_values(probe)
    del probe
    if count > limits.MAX_PARAMETERS:
        raise CheckpointError(
            f"{architecture} built from these arguments would hold {count:,} values, over the bound of "
            f"{limits.MAX_PARAMETERS:,}: fix the spec's arguments (sizes, width, depth)"
        )
    return family.build(architecture, arguments)


def describe(model: nn.Module) -> tuple[str, dict] | None:
    """``(architecture, arguments)`` read from the model itself, where its family says (the reference ViT does)."""
    for family in FAMILIES:
        described = family.describe(model)
        if described is not None:
            return described
    return None
