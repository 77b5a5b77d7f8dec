"""Fitting a file's tensors to a model: find the state dict, compare, load.

Every mismatch is reported by name: the first missing and unexpected keys, or
the first tensor whose shape differs, with both shapes. Keys that a caller
declares tolerable (known drift between library versions) are left out of
the comparison and reported as a warning instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from napari_vitcam.core.errors import CheckpointError

StateDict = dict[str, torch.Tensor]
Tolerated = Callable[[str, nn.Module], bool]

CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "network", "net", "weights", "module", "ema")
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "network.", "net.")
_SHOWN = 3


@dataclass(frozen=True)
class KeyReport:
    """How a state dict's keys and shapes compare with a model's."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored_missing: list[str] = field(default_factory=list)
    ignored_unexpected: list[str] = field(default_factory=list)


def is_state_dict(obj) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def find_state_dict(obj, source: str) -> StateDict:
    """The mapping of names to tensors in ``obj``: itself, or under a usual key (``state_dict``, ``model``...)."""
    if is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in CONTAINER_KEYS:
            if is_state_dict(obj.get(key)):
                return dict(obj[key])
        keys = ", ".join(repr(k) for k in list(obj)[:5])
        raise CheckpointError(
            f"{source} holds a mapping ({keys}) with no state dict of tensors in it: "
            "save model.state_dict(), or put it under 'state_dict'"
        )
    raise CheckpointError(
        f"{source} holds an object of type {type(obj).__name__}, not a state dict: "
        "save model.state_dict() or use save_checkpoint"
    )


def strip_wrapper_prefix(state: StateDict, model_keys: set[str]) -> tuple[StateDict, str | None]:
    """Drop a prefix that wraps every key (``module.`` from DataParallel, ``_orig_mod.``...) when the model has none."""
    if not state or set(state) & model_keys:
        return state, None
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix) :]: v for k, v in state.items()}
            if set(stripped) & model_keys:
                return stripped, prefix
    return state, None


def compare_keys(model: nn.Module, state: StateDict, tolerated: Tolerated | None = None) -> KeyReport:
    expected = model.state_dict()
    tolerated = tolerated or (lambda key, model: False)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        (k, tuple(state[k].shape), tuple(expected[k].shape))
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    return KeyReport(
        missing=[k for k in missing if not tolerated(k, model)],
        unexpected=[k for k in unexpected if not tolerated(k, model)],
        mismatched=mismatched,
        ignored_missing=[k for k in missing if tolerated(k, model)],
        ignored_unexpected=[k for k in unexpected if tolerated(k, model)],
    )


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


FIT_HINT = "check that the architecture and its arguments match the file"


def key_error(report: KeyReport, source: str, what: str, hint: str = FIT_HINT) -> CheckpointError | None:
    """The one-line error a report calls for, or None when the state dict fits."""
    if report.missing or report.unexpected:
        parts = []
        if report.missing:
            parts.append(f"{len(report.missing)} missing keys ({_first(report.missing)})")
        if report.unexpected:
            parts.append(f"{len(report.unexpected)} unexpected keys ({_first(report.unexpected)})")
        return CheckpointError(f"{source} does not fit {what}: {' and '.join(parts)}: {hint}")
    if report.mismatched:
        key, in_file, in_model = report.mismatched[0]
        more = f" ({len(report.mismatched)} tensors differ)" if len(report.mismatched) > 1 else ""
        return CheckpointError(
            f"{source} does not fit {what}: {key} has shape {in_file} in the file but {in_model} "
            f"in the model{more}: check the architecture's arguments (sizes, number of classes)"
        )
    return None


def _patterns(keys: list[str]) -> str:
    """``blocks.0.x.w, blocks.1.x.w`` -> ``blocks.*.x.w``, in first-seen order."""
    seen: dict[str, None] = {}
    for key in keys:
        seen.setdefault(re.sub(r"\.\d+\.", ".*.", key), None)
    return ", ".join(seen)


def drift_warning(report: KeyReport, source: str) -> str | None:
    if not (report.ignored_missing or report.ignored_unexpected):
        return None
    parts = []
    if report.ignored_unexpected:
        parts.append(f"{len(report.ignored_unexpected)} keys in the file: {_patterns(report.ignored_unexpected)}")
    if report.ignored_missing:
        parts.append(
            f"{len(report.ignored_missing)} keys absent from the file, left at their initial values: "
            f"{_patterns(report.ignored_missing)}"
        )
    return f"{source}: ignored key drift between library versions ({'; '.join(parts)}); these layers are unused"


def load_state(
    model: nn.Module, state: StateDict, *, source: str, what: str, tolerated: Tolerated | None = None
) -> list[str]:
    """Load ``state`` into ``model`` or raise a :class:`CheckpointError` naming what does not fit.

    Returns the warnings loading gave (a stripped wrapper prefix, ignored drift keys).
    """
    warnings: list[str] = []
    state, prefix = strip_wrapper_prefix(state, set(model.state_dict()))
    if prefix:
        warnings.append(f"{source}: removed the prefix {prefix!r} that wrapped every key")
    report = compare_keys(model, state, tolerated)
    error = key_error(report, source, what)
    if error is not None:
        raise error
    drift = drift_warning(report, source)
    if drift:
        warnings.append(drift)
    kept = {k: v for k, v in state.items() if k not in set(report.ignored_unexpected)}
    model.load_state_dict(kept, strict=False)
    return warnings


def first_non_finite(tensors: Mapping[str, torch.Tensor], *, allow_infinite: bool = False) -> str | None:
    """The name of the first floating-point tensor holding NaN (or Inf, unless allowed), or None."""
    for key, tensor in tensors.items():
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        bad = torch.isnan(tensor) if allow_infinite else ~torch.isfinite(tensor)
        if bool(bad.any()):
            return key
    return None


def check_finite(model: nn.Module, source: str, remedy: str) -> None:
    """Refuse a model whose weights hold NaN or Inf: it gives NaN scores and empty maps, not an error.

    Parameters must be finite; buffers must not be NaN (a mask buffer may hold -Inf on purpose).

    Args:
        model: the model, weights loaded.
        source: names the file or model in the message.
        remedy: what to do about it.
    """
    key = first_non_finite(dict(model.named_parameters()))
    if key is None:
        key = first_non_finite(dict(model.named_buffers()), allow_infinite=True)
    if key is not None:
        raise CheckpointError(f"{source}: the tensor {key} holds non-finite values (NaN or Inf): {remedy}")
