"""Loading triton safely into a napari that draws with Mesa's software OpenGL.

Triton (installed with every CUDA build of PyTorch) carries its own copy of
LLVM inside ``triton/_C/libtriton.so``. Mesa's software renderer (llvmpipe:
virtual machines, remote desktops, Xvfb) loads the system's ``libLLVM`` when
napari creates its OpenGL context. Once that has happened, loading libtriton
the ordinary way binds part of its LLVM to Mesa's and the process dies with a
segmentation fault inside libtriton's static initialisers. napari then closes
with the user's unsaved work.

Loading a MONAI network is enough to get there: MONAI imports torchvision,
torchvision imports ``torch._dynamo``, and that imports triton. So before the
plugin loads any model, :func:`preload_triton` loads libtriton with
``RTLD_DEEPBIND`` (its own symbols first) when, and only when, an LLVM is
already mapped into the process. The later ``import triton`` reuses that
loaded library. Elsewhere (no LLVM loaded yet, no triton, not Linux) it does
nothing.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
import threading
from pathlib import Path

_lock = threading.Lock()
_preloaded: list[Path] = []


def llvm_loaded(maps: Path = Path("/proc/self/maps")) -> bool:
    """Whether a shared ``libLLVM`` (Mesa's llvmpipe loads one) is mapped into this process."""
    try:
        text = maps.read_text(errors="replace")
    except OSError:
        return False
    return "/libLLVM" in text


def triton_library() -> Path | None:
    """``triton/_C/libtriton.so`` of the installed triton, found without importing triton."""
    try:
        spec = importlib.util.find_spec("triton")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted((Path(folder) / "_C").glob("libtriton*.so"))
        if found:
            return found[0]
    return None


def preload_triton() -> Path | None:
    """Load libtriton with its own LLVM bound first, if an LLVM is already loaded here.

    Returns the library loaded now, or None when nothing needed doing: triton
    is not installed or already imported, no LLVM is mapped yet (triton loads
    safely then), or the platform has no ``RTLD_DEEPBIND``.
    """
    deep_bind = getattr(os, "RTLD_DEEPBIND", None)
    if deep_bind is None or "triton" in sys.modules:
        return None
    with _lock:
        if _preloaded or not llvm_loaded():
            return None
        library = triton_library()
        if library is None:
            return None
        # Python's import opens the same file later and gets this handle, with its bindings.
        ctypes.CDLL(str(library), mode=os.RTLD_NOW | deep_bind)
        _preloaded.append(library)
        return library
