"""Errors the package raises on purpose.

Each carries a one-line message that says what is wrong and what to do, so the
GUI can show it as a notification instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from napari_vitcam.core.vocabulary import one_line


class VitcamError(Exception):
    """Base of every error napari-vitcam raises about the user's input."""


class TargetLayerError(VitcamError, ValueError):
    """The target layer does not exist, was not called, or is not on the score's path."""


class DegenerateTargetError(TargetLayerError):
    """The gradient at the target layer is identically zero, so the map would be empty."""


class LayoutError(VitcamError, ValueError):
    """The target layer's output cannot be read as a map over the token grid."""


class ModelOutputError(VitcamError, ValueError):
    """The model's output holds no logits the engine can read."""


class InputError(VitcamError, ValueError):
    """The volume does not fit the model (dimensions, channels)."""


class NonFiniteInputError(InputError):
    """The volume holds NaN or ±Inf voxels; the ``nonfinite=replace`` option replaces them."""


class CheckpointError(VitcamError, ValueError):
    """A checkpoint cannot be read or does not fit its declared architecture."""


class UntrustedCheckpointError(CheckpointError):
    """The file needs full unpickling, which can run arbitrary code."""


class MissingExtraError(VitcamError, ImportError):
    """An optional dependency is needed for this file."""


class DeviceError(VitcamError, RuntimeError):
    """The requested device does not exist here."""


class DeviceOutOfMemoryError(VitcamError, RuntimeError):
    """The device ran out of memory; the memory the run held was released."""

    def __init__(self, message: str, device: str):
        super().__init__(message)
        self.device = device


class Cancelled(VitcamError):
    """The run was cancelled by the caller."""


def is_out_of_memory(error: BaseException) -> bool:
    """A device's out-of-memory error, or the CPU allocator's (a plain RuntimeError)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


@contextmanager
def model_errors_as_input_errors(shape: tuple[int, ...]) -> Iterator[None]:
    """Reword a model's own failure on an input of ``shape`` as a one-line :class:`InputError`.

    Our own errors and running out of memory pass through unchanged.
    """
    try:
        yield
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        if isinstance(error, VitcamError) or is_out_of_memory(error):
            raise
        reason = one_line(error)
        raise InputError(
            f"the model fails on an input of shape {tuple(shape)} ({type(error).__name__}: {reason}): "
            "check that the checkpoint's input spec (channels, spatial size) matches its model"
        ) from error
