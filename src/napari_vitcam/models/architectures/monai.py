"""MONAI networks by class name, and the key drift between MONAI versions.

MONAI is an optional extra: it is imported only when a checkpoint needs it,
and its absence is reported as :class:`~napari_vitcam.core.errors.MissingExtraError`
with the command that adds it.
"""

from __future__ import annotations

import difflib
import re
from types import ModuleType

from torch import nn

from napari_vitcam.core.errors import CheckpointError, MissingExtraError
from napari_vitcam.core.vocabulary import one_line
from napari_vitcam.models.architectures.base import ArchitectureFamily

PREFIX = "monai:"
INSTALL = 'pip install "napari-vitcam[monai]"'
_NETS_PREFIXES = ("monai.networks.nets.", "monai.networks.")
# Older MONAI ViT blocks always built a cross-attention branch (keys
# ``cross_attn.*``) or had no ``norm_cross_attn``; newer ones are the reverse.
# Both are unused when the block was built without cross-attention.
_CROSS_ATTENTION_KEY = re.compile(r"^(?P<owner>.+)\.(?:norm_cross_attn|cross_attn)\.[^.].*$")


def missing_extra(what: str, error: ImportError) -> MissingExtraError:
    name = (getattr(error, "name", None) or "monai").split(".")[0]
    return MissingExtraError(f"{what} needs {name}, which is not installed: {INSTALL}")


def require_monai(what: str = "this checkpoint") -> ModuleType:
    """``monai.networks.nets``, or :class:`MissingExtraError`."""
    try:
        import monai.networks.nets as nets
    except ImportError as error:
        raise missing_extra(what, error) from None
    return nets


def class_name_of(target: str) -> str:
    """``"monai.networks.nets.ViT"`` or ``"ViT"`` -> ``"ViT"``; other dotted names are returned as they are."""
    for prefix in _NETS_PREFIXES:
        if target.startswith(prefix):
            return target.rsplit(".", 1)[-1]
    return target


def is_network_name(target: str) -> bool:
    """Whether ``target`` names a class of ``monai.networks.nets`` (MONAI must be installed)."""
    name = class_name_of(target)
    if not name.isidentifier():
        return False
    candidate = getattr(require_monai(f"MONAI network {name!r}"), name, None)
    return isinstance(candidate, type) and issubclass(candidate, nn.Module)


def network_class(name: str) -> type[nn.Module]:
    nets = require_monai(f"MONAI network {name!r}")
    candidate = getattr(nets, name, None)
    if isinstance(candidate, type) and issubclass(candidate, nn.Module):
        return candidate
    known = [n for n in dir(nets) if isinstance(getattr(nets, n), type)]
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "see monai.networks.nets for the names"
    raise CheckpointError(f"MONAI has no network named {name!r}: {hint}")


def _optional_import_error(error: Exception) -> str | None:
    """The package a MONAI ``OptionalImportError`` says is missing, or None for other errors."""
    if type(error).__name__ != "OptionalImportError":
        return None
    found = re.search(r"No module named '([\w.]+)'", str(error))
    return found.group(1).split(".")[0] if found else "an optional dependency"


def build_network(name: str, arguments: dict) -> nn.Module:
    """``monai.networks.nets.<name>(**arguments)``, for 3-D networks only."""
    cls = network_class(name)
    dims = arguments.get("spatial_dims", 3)
    if dims != 3:
        raise CheckpointError(
            f"MONAI {name} is built with spatial_dims={dims!r}: napari-vitcam explains 3-D networks only"
        )
    try:
        return cls(**arguments)
    except Exception as error:  # constructors raise many kinds; all mean the arguments do not fit
        missing = _optional_import_error(error)
        if missing is not None:
            raise MissingExtraError(f"MONAI {name} needs {missing}, which is not installed: {INSTALL}") from None
        raise CheckpointError(
            f"cannot build MONAI {name} from its arguments ({type(error).__name__}: "
            f"{one_line(error)}): fix the arguments"
        ) from None


def is_version_drift(key: str, model: nn.Module) -> bool:
    """Whether ``key`` is cross-attention drift in a transformer block built without cross-attention."""
    found = _CROSS_ATTENTION_KEY.match(key)
    if found is None:
        return False
    try:
        owner = model.get_submodule(found.group("owner"))
    except AttributeError:
        return False
    return type(owner).__name__ == "TransformerBlock" and not getattr(owner, "with_cross_attention", False)


class MonaiNetwork(ArchitectureFamily):
    """``"monai:<ClassName>"``: a 3-D network of ``monai.networks.nets``; arguments are its constructor's."""

    form = "'monai:<ClassName>'"

    def matches(self, name: str) -> bool:
        return name.startswith(PREFIX) and name[len(PREFIX) :].isidentifier()

    def build(self, name: str, arguments: dict) -> nn.Module:
        return build_network(name[len(PREFIX) :], arguments)
