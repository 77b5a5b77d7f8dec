"""What a checkpoint format is: a way a model and its spec are stored that napari-vitcam can load.

To add a format: subclass :class:`CheckpointFormat` in a module of this
package and list an instance in :data:`napari_vitcam.models.formats.registry.FORMATS`.
:func:`~napari_vitcam.models.checkpoint.load_checkpoint` asks the formats in
order; a weights file is read once (safely, see :mod:`napari_vitcam.models.weights`)
and handed to each format in turn, a folder is handed as its path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from torch import nn

from napari_vitcam.models.architectures.factory import Factory
from napari_vitcam.models.spec import ModelSpec
from napari_vitcam.models.weights import WeightsFile


@dataclass(frozen=True)
class LoadRequest:
    """What the caller of :func:`~napari_vitcam.models.checkpoint.load_checkpoint` asked for.

    ``trust``: full unpickling and a bundle's code may run. ``factory``,
    ``factory_kwargs``: the user's code that builds the model, and its
    arguments. ``spec``: replaces what the file says about the model.
    """

    trust: bool = False
    factory: Factory | None = None
    factory_kwargs: dict | None = None
    spec: ModelSpec | None = None


@dataclass
class LoadedParts:
    """What a format read: the model with its weights loaded, its spec, the files read and what was tolerated.

    ``files`` maps each file's absolute path to its sha256; ``format`` is the
    format's :attr:`CheckpointFormat.name`; ``warnings`` lists what loading
    tolerated (a removed key prefix, version drift, defaults taken).
    """

    model: nn.Module
    spec: ModelSpec
    files: dict[str, str]
    format: str
    warnings: list[str] = field(default_factory=list)


#: What a format is asked about: a folder, or a weights file already read.
CheckpointSource = Path | WeightsFile


class CheckpointFormat(ABC):
    """One way a checkpoint is stored: a folder layout, or what a weights file holds.

    The first format in the registry that :meth:`claims` a source loads it.
    """

    #: The name :attr:`LoadedModel.format <napari_vitcam.models.loaded_model.LoadedModel.format>` reports.
    name: ClassVar[str]

    @abstractmethod
    def claims(self, source: CheckpointSource) -> bool:
        """Whether ``source`` (a folder, or a file already read) is stored in this format."""

    @abstractmethod
    def load(self, source: CheckpointSource, request: LoadRequest) -> LoadedParts:
        """Load a source this format claimed.

        Args:
            source: the folder, or the weights file (read once, safely).
            request: what the caller asked for.

        Raises:
            CheckpointError: the source cannot be loaded (one line, with what to do).
        """
