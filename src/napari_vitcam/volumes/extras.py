"""Optional packages of the ``radiology`` extra (nibabel, pydicom, highdicom), imported only when a file needs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from napari_vitcam.core.errors import MissingExtraError

INSTALL = "pip install 'napari-vitcam[radiology]'"


def require(module: str, what: str) -> ModuleType:
    """Import ``module`` or raise a one-line :class:`MissingExtraError` saying that ``what`` needs it.

    Args:
        module: the module to import (``"nibabel"``).
        what: what needs it, for the message (``"reading NIfTI files"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{what} needs {module.split('.')[0]}, which is not installed: {INSTALL}") from None
