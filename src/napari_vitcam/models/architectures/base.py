"""What an architecture family is: a way of writing a model's name that napari-vitcam can build.

To add a family: subclass :class:`ArchitectureFamily` in a module of this
package and list an instance in :data:`napari_vitcam.models.architectures.registry.FAMILIES`.
Nothing else dispatches on architecture names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import nn


class ArchitectureFamily(ABC):
    """One way to name an architecture in a spec, e.g. ``"ViT3D"`` or ``"monai:<ClassName>"``.

    ``form`` is how the name is written, for messages. ``runs_user_code``
    marks a family whose models are built by the user's code: such a model is
    never built from a name read in a file, and not rebuilt when saving.
    """

    form: ClassVar[str]
    runs_user_code: ClassVar[bool] = False

    @abstractmethod
    def matches(self, name: str) -> bool:
        """Whether ``name`` is written in this family's form."""

    @abstractmethod
    def build(self, name: str, arguments: dict) -> nn.Module:
        """The model ``name`` stands for, built from its constructor's ``arguments``.

        Args:
            name: an architecture name this family matches.
            arguments: the constructor's keyword arguments (JSON values).

        Raises:
            CheckpointError: the arguments do not build the model (one line, with what to fix).
        """

    def describe(self, model: nn.Module) -> tuple[str, dict] | None:
        """``(name, arguments)`` read from a model of this family, or None when the model does not say."""
        return None
