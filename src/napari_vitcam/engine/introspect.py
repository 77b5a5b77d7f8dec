"""Finding modules and reading model outputs. Pure torch."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping

import torch
from torch import nn

from napari_vitcam.core.errors import InputError, ModelOutputError, TargetLayerError
from napari_vitcam.core.vocabulary import Triple

_CONTAINERS = (nn.Sequential, nn.ModuleList)


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
    raise TargetLayerError(f"the model has no module named {layer!r}{_names_hint(model, close)}")


def _names_hint(model: nn.Module, close: list[str]) -> str:
    """Close names, else the model's own top-level modules and a dotted example: what to type instead."""
    if close:
        return f"; did you mean {', '.join(close)}?"
    top = [name for name, _ in model.named_children()]
    if not top:
        return "; the model has no submodules to name"
    shown = ", ".join(top[:12]) + (", …" if len(top) > 12 else "")
    names = [name for name, _ in model.named_modules()]
    blocks = [name for name in names if re.fullmatch(r"[^.]+\.\d+", name)]  # the first block of a stack
    dotted = next(iter(blocks or [name for name in names if "." in name]), None)
    example = f" (name a submodule with dots, e.g. {dotted!r})" if dotted else ""
    return f"; its top-level modules are {shown}{example}"


def check_input(x: object, model: nn.Module | None = None) -> torch.Tensor:
    """``x`` if it is a finite (batch, channels, depth, height, width) tensor, else one-line :class:`InputError`.

    A NaN or ±Inf value would flow through the model into NaN logits and a NaN
    map, a result that looks like an answer; it is refused with the count and
    the first index instead. With ``model``, an input of another dtype (float64
    from numpy, integers) comes back in the dtype of the model's weights, as
    the model computes it.
    """
    if not isinstance(x, torch.Tensor):
        what = f"a {type(x).__module__.split('.')[0]}.{type(x).__name__}" if hasattr(x, "shape") else type(x).__name__
        raise InputError(f"x is {what}, not a torch tensor: give a (batch, channels, depth, height, width) tensor")
    if x.ndim != 5:
        raise InputError(f"x must be a (batch, channels, depth, height, width) tensor, got {tuple(x.shape)}")
    if x.is_floating_point() or x.is_complex():
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            bad = ~finite
            first = tuple(int(i) for i in torch.nonzero(bad)[0].tolist())
            raise InputError(
                f"x holds {int(bad.sum())} non-finite value(s) (NaN or ±Inf), the first at index {first}: "
                "give finite values (explain_volume can replace them: nonfinite='replace')"
            )
    dtype = model_dtype(model) if model is not None else None
    return x if dtype is None or x.dtype == dtype else x.to(dtype)


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating-point weight (None: it has none)."""
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return None


def ends_in_sigmoid(model: nn.Module) -> bool:
    """Whether the model's last registered leaf module is a sigmoid: its outputs are then probabilities already."""
    leaves = [module for module in model.modules() if next(module.children(), None) is None]
    return bool(leaves) and isinstance(leaves[-1], nn.Sigmoid)


def model_device(model: nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
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


def _is_transformer_block(module: nn.Module) -> bool:
    """A block with a ``norm1`` child, as in timm's, MONAI's and this package's ViTs."""
    return "norm1" in dict(module.named_children())


def find_block_list(model: nn.Module) -> tuple[str, list[str]] | None:
    """The longest ModuleList/Sequential of same-class, non-leaf modules.

    Two or more of them, or a single one that is a transformer block (has a
    ``norm1``): a one-block ViT still has its block list.
    """
    best: tuple[str, list[str]] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, _CONTAINERS):
            continue
        children = list(module.named_children())
        if not children or len({type(c) for _, c in children}) != 1:
            continue
        if not any(True for _ in children[0][1].children()):
            continue
        if len(children) == 1 and not _is_transformer_block(children[0][1]):
            continue
        if best is None or len(children) > len(best[1]):
            prefix = f"{name}." if name else ""
            best = (name, [prefix + child for child, _ in children])
    return best


def _is_layer_norm_block(module: nn.Module) -> bool:
    return isinstance(dict(module.named_children()).get("norm1"), nn.LayerNorm)


def find_stage_lists(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Every list of transformer blocks (children with a LayerNorm ``norm1``), in definition order.

    A hierarchical transformer (MONAI's ``SwinTransformer``) holds one list per
    stage, each on its own grid; a plain ViT holds one.
    """
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, _CONTAINERS):
            continue
        children = list(module.named_children())
        if children and all(_is_layer_norm_block(c) for _, c in children):
            prefix = f"{name}." if name else ""
            out.append((name, [prefix + child for child, _ in children]))
    return out


def find_patch_embedding(model: nn.Module) -> tuple[str, nn.Conv3d] | None:
    """The first Conv3d whose kernel equals its stride with no padding: a patch embedding."""
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.Conv3d)
            and tuple(module.kernel_size) == tuple(module.stride)
            and all(p == 0 for p in _as_tuple(module.padding))
            and max(module.kernel_size) > 1
        ):
            return name, module
    return None


def declared_patch_size(model: nn.Module) -> Triple | None:
    """A patch size the model declares.

    A 3-sequence or int ``patch_size`` attribute, or an einops ``Rearrange``
    that cuts the input's last three axes into patches, whatever its axis
    names (``'b c (d p1) (h p2) (w p3) -> ...'``, or vit-pytorch's
    ``'b c (f pf) (h p1) (w p2) -> ...'`` whose frame patch size is ``pf``
    beside a 2-tuple ``patch_size``).
    """
    for module in model.modules():
        size = getattr(module, "patch_size", None)
        if isinstance(size, int) and size > 0:
            return (size, size, size)
        if isinstance(size, (tuple, list)) and len(size) == 3 and all(isinstance(s, int) for s in size):
            return tuple(size)
        from_pattern = _einops_patch_size(module)
        if from_pattern is not None:
            return from_pattern
    return None


_GROUP = re.compile(r"\([^)]*\)|\S+")


def _einops_patch_size(module: nn.Module) -> Triple | None:
    """The patch size an einops Rearrange cuts the last three input axes into, or None."""
    pattern = getattr(module, "pattern", None)
    lengths = getattr(module, "axes_lengths", None)
    if not isinstance(pattern, str) or "->" not in pattern or not isinstance(lengths, dict):
        return None
    left = _GROUP.findall(pattern.split("->")[0])
    if len(left) < 5:
        return None
    patch = []
    for group in left[-3:]:
        names = group.strip("()").split()
        sizes = [int(lengths[n]) for n in names[1:] if n in lengths]
        if not group.startswith("(") or len(names) != 2 or len(sizes) != 1:
            return None
        patch.append(sizes[0])
    return tuple(patch)  # type: ignore[return-value]


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)
