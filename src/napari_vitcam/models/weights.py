"""Reading weight files safely.

What a file holds is told from its first bytes, not its name:

* safetensors: read with ``safetensors`` (tensors and a string metadata table);
* a PyTorch zip or legacy file: read with ``torch.load(weights_only=True)``,
  which refuses pickled Python objects other than tensors and plain
  containers. A file that needs full unpickling (a whole pickled
  ``nn.Module``, for example) is refused with
  :class:`~napari_vitcam.core.errors.UntrustedCheckpointError` unless the caller
  passes ``trust=True``; a pickle that calls a blocked module (``os``,
  ``sys``: it would run a command) is refused even then;
* a TorchScript archive: refused, as Grad-CAM's hooks do not work on
  ScriptModules.

Every file read is hashed (sha256) so an explanation can be traced to it.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from napari_vitcam.core.errors import CheckpointError, UntrustedCheckpointError
from napari_vitcam.core.vocabulary import one_line

SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".ts")
FileKind = Literal["safetensors", "torch"]
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightsFile:
    """What one weights file held.

    ``content``: for safetensors, the mapping of names to tensors; for a
    PyTorch file, the object ``torch.load`` returned. ``metadata``: the
    safetensors header's string table (empty for PyTorch files).
    ``unpickled``: the file was read with full unpickling (``trust=True``).
    """

    path: Path
    kind: FileKind
    content: Any
    sha256: str
    metadata: dict[str, str] = field(default_factory=dict)
    unpickled: bool = False


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_suffix(path: Path) -> None:
    """Refuse a file whose extension is not one of :data:`SUFFIXES`."""
    if path.suffix.lower() not in SUFFIXES:
        shown = path.suffix or "(none)"
        raise CheckpointError(
            f"{path.name} has an unknown extension {shown}: give a .safetensors or .pt/.pth file, "
            "or a MONAI bundle folder"
        )


def _corrupt(path: Path, what: str, reason: object) -> CheckpointError:
    reason = one_line(reason)
    return CheckpointError(
        f"{path.name} cannot be read as {what} ({reason}): it may be truncated or corrupt; download or save it again"
    )


def _torchscript(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path.name} is a TorchScript archive, and Grad-CAM's hooks do not work on ScriptModules: "
        "save the eager model's weights instead (save_checkpoint, or torch.save(model.state_dict(), ...)) "
        "and load them with the model's architecture"
    )


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    header = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 8 + header <= size


def _zip_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise _corrupt(path, "a PyTorch file", error) from None
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        raise _corrupt(path, "a PyTorch file", "a zip archive without data.pkl")
    return "torch"


def sniff(path: Path) -> str:
    """``"safetensors"``, ``"torch"`` or ``"torchscript"``, from the file's first bytes."""
    size = path.stat().st_size
    if size == 0:
        raise _corrupt(path, "a weights file", "the file is empty")
    with open(path, "rb") as handle:
        head = handle.read(16)
    if _is_safetensors(head, size):
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path)
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return "torch"
    raise _corrupt(path, "a safetensors or PyTorch file", "unrecognised content")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise _corrupt(path, "a safetensors file", error) from None
    return tensors, metadata


#: How torch's weights-only unpickler words a refused class or function, across versions:
#: "Unsupported global: GLOBAL x.Y was not an allowed global by default" (any class not allowlisted),
#: "Trying to load unsupported GLOBAL posix.system whose module posix is blocked" (os, sys, ...),
#: and the allowlist hints of object construction ("classes allowlisted via `add_safe_globals`").
_REFUSED_GLOBAL = re.compile(r"unsupported(?: global:)? GLOBAL (?P<name>[\w.]+)", re.IGNORECASE)
_BLOCKED_MODULE = re.compile(r"whose module (?P<module>[\w.]+) is blocked")
_ALLOWLIST_HINTS = ("add_safe_globals", "safe_globals", "allowlist", "allowed global")

#: The remedy a refusal to unpickle gives, for every front end.
TRUST_REMEDY = "if you trust its source, load it with trust=True (--trust on the command line; the plugin asks first)"


@dataclass(frozen=True)
class RefusedGlobal:
    """What a weights-only load refused: the class or function, and whether its module is blocked outright."""

    name: str
    blocked: bool


def refused_global(message: str) -> RefusedGlobal | None:
    """The class a weights-only load refused, or None when the refusal was for another reason (a corrupt file)."""
    found = _REFUSED_GLOBAL.search(message)
    blocked = _BLOCKED_MODULE.search(message) is not None
    if found:
        return RefusedGlobal(found.group("name"), blocked)
    if blocked or any(hint in message for hint in _ALLOWLIST_HINTS):
        return RefusedGlobal("object", blocked)
    return None


def _untrusted(path: Path, what: str) -> UntrustedCheckpointError:
    return UntrustedCheckpointError(
        f"{path.name} holds a pickled {what}, not only weights, and unpickling it can run arbitrary code: "
        f"{TRUST_REMEDY}; otherwise ask for a state_dict or .safetensors file"
    )


def _never_unpickled(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path.name} holds a pickle that calls {what}, which no model file needs (it would run a command): "
        "it is never unpickled, trusted or not; ask for a state_dict or .safetensors file"
    )


def _torch_load(path: Path, *, weights_only: bool) -> Any:
    """``torch.load`` from an open file: torch then reads the content, whatever the name (it would read any
    file named ``.safetensors`` as safetensors)."""
    with open(path, "rb") as handle:
        return torch.load(handle, map_location="cpu", weights_only=weights_only)


def _read_torch(path: Path, trust: bool) -> tuple[Any, bool]:
    try:
        return _torch_load(path, weights_only=True), False
    except pickle.UnpicklingError as error:
        refused = refused_global(str(error))
        if refused is None:
            raise _corrupt(path, "a PyTorch file", str(error).split(".")[0]) from None
        if refused.blocked:
            raise _never_unpickled(path, refused.name) from None
        if not trust:
            raise _untrusted(path, refused.name) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise _corrupt(path, "a PyTorch file", error) from None
    try:
        return _torch_load(path, weights_only=False), True
    except (ImportError, AttributeError) as error:
        raise CheckpointError(
            f"{path.name} needs code that is not installed here to unpickle ({error}): "
            "install the package that defines the model, or ask for a state_dict"
        ) from None
    except Exception as error:  # unpickling runs foreign code: anything can come out of it
        raise _corrupt(path, "a pickled PyTorch file", f"{type(error).__name__}: {error}") from None


def read_weights(path: Path, *, trust: bool = False) -> WeightsFile:
    """Read one weights file safely; see the module docstring."""
    path = Path(path)
    check_suffix(path)
    kind = sniff(path)
    if kind == "torchscript":
        raise _torchscript(path)
    digest = sha256_file(path)
    if kind == "safetensors":
        tensors, metadata = _read_safetensors(path)
        return WeightsFile(path, "safetensors", tensors, digest, metadata)
    content, unpickled = _read_torch(path, trust)
    return WeightsFile(path, "torch", content, digest, unpickled=unpickled)
