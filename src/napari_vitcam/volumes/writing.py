"""Writing a heatmap file safely: checked before any work, written atomically, never over an input.

:func:`check_output` says up front (before a model is even loaded) whether a
heatmap can be written to a path; :func:`write_heatmap` writes it to a
temporary file in the same folder and renames it into place, so a failure
leaves no half-written file and a reader never sees one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_vitcam.volumes.base import HeatmapWriter, Volume, VolumeFileError, path_suffix
from napari_vitcam.volumes.registry import writer_for


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def input_files(source: Path) -> list[Path]:
    """The files an input consists of: the file itself, or every file in a series folder."""
    source = Path(source)
    if source.is_dir():
        return [p for p in source.iterdir() if p.is_file()]
    return [source]


def check_output(
    path: Path, *, inputs: Iterable[Path] = (), force: bool = False, source: Volume | None = None
) -> HeatmapWriter:
    """The writer for ``path``, after checking that writing there is possible and loses nothing.

    Args:
        path: the heatmap file to write.
        inputs: files and folders that must never be written over (the volume, a checkpoint...).
        force: allow replacing an existing file (never an input, never a folder).
        source: the volume the heatmap will be of (a DICOM Parametric Map needs a DICOM series).

    Raises:
        VolumeFileError: one line: unknown suffix, missing folder, output is an input or exists, ...
    """
    path = Path(path)
    writer = writer_for(path)
    writer.check(source)
    for item in inputs:
        item = Path(item)
        if item.is_dir() and _same_file(path, item):
            raise VolumeFileError(f"{path} is the input folder {item.name}: give a file name for the heatmap")
        for existing in input_files(item) if item.exists() else []:
            if (path.exists() and _same_file(path, existing)) or path.resolve() == existing.resolve():
                raise VolumeFileError(f"{path} is the input {existing.name}: choose another output file")
    if path.parent.exists() and not path.parent.is_dir():
        raise VolumeFileError(f"{path.parent} is a file, not a folder: choose another output")
    if not path.parent.is_dir():
        raise VolumeFileError(f"the folder {path.parent} does not exist: create it or choose another output")
    if path.is_dir():
        raise VolumeFileError(f"{path} is a folder: give a file name for the heatmap")
    if (path.exists() or path.is_symlink()) and not force:
        raise VolumeFileError(f"{path} exists: choose another output or pass --force to replace it")
    if not os.access(path.parent, os.W_OK):
        raise VolumeFileError(f"cannot write in {path.parent}: choose a folder you may write to")
    return writer


def write_heatmap(
    path: Path,
    heatmap: np.ndarray,
    *,
    affine: np.ndarray | None,
    provenance: Mapping[str, Any],
    force: bool = False,
    source: Volume | None = None,
) -> Path:
    """Write ``heatmap`` to exactly ``path`` (the suffix chooses the format), atomically.

    Args:
        path: the file to write; its suffix chooses the writer.
        heatmap: the map in the source's axis order.
        affine: the source's voxel-to-RAS affine (mm), or None.
        provenance: what made the map (JSON-ready), for formats that store it.
        force: replace an existing file; without it an existing file is never replaced,
            even one that appeared while the map was computed.
        source: the volume the map is of (needed by formats that reference it: DICOM).

    Returns:
        ``path``.
    """
    path = Path(path)
    writer = writer_for(path)
    if not path.parent.is_dir():
        raise VolumeFileError(f"the folder {path.parent} does not exist: create it or choose another output")
    suffix = path_suffix(path, writer.suffixes) or path.suffix
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{suffix}", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        writer.write_to(temporary, heatmap, affine=affine, provenance=provenance, source=source)
        os.chmod(temporary, 0o666 & ~_umask())  # as a plain open() would have made it, not mkstemp's 0o600
        if force:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)  # fails if the file appeared meanwhile: nothing is replaced
            except FileExistsError:
                raise VolumeFileError(f"{path} exists: choose another output or pass --force to replace it") from None
            except OSError:  # no hard links on this file system
                if path.exists():
                    raise VolumeFileError(
                        f"{path} exists: choose another output or pass --force to replace it"
                    ) from None
                os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    return path
