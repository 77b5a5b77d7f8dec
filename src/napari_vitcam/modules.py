"""Finding modules and reading model outputs. Pure torch."""

from __future__ import annotations

import difflib
from collections.abc import Mapping

import torch
from torch import nn

from .errors import ModelOutputError, TargetLayerError


def resolve_module(model: nn.Module, layer: str | nn.Module, what: str = "target layer") -> tuple[str, nn.Module]:
    """``(dotted name, module)`` for a dotted name or a module of ``model``."""
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        raise TargetLayerError(f"the {what} module is not part of this model: pass one of its submodules")
    if not isinstance(layer, str):
        raise TargetLayerError(f"{what} must be a dotted module name or a module, got {type(layer).__name__}")
    names = dict(model.named_modules())
    if layer in names and layer != "":
        return layer, names[layer]
    close = difflib.get_close_matches(layer, [n for n in names if n], n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; list them with model.named_modules()"
    raise TargetLayerError(f"the model has no module named {layer!r}{hint}")


def model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def read_logits(output) -> torch.Tensor:
    """Logits from a model output: a tensor, a tuple/list led by them, or a mapping with 'logits'."""
    if isinstance(output, torch.Tensor):
        logits = output
    elif isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        logits = output[0]
    elif isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        logits = output["logits"]
    else:
        raise ModelOutputError(
            f"cannot find logits in the model output ({type(output).__name__}): return a tensor, "
            "a tuple whose first item is the logits, or a mapping with 'logits'; or name the score layer"
        )
    if logits.ndim != 2:
        raise ModelOutputError(
            f"the logits have shape {tuple(logits.shape)}, expected (batch, classes): name the score layer"
        )
    return logits
