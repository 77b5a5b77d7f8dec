"""Finding a transformer's attention probabilities by probing the model, not by class names.

An attention matrix is recognised by what it is: a (B, heads, T, T) tensor,
non-negative, whose rows sum to 1 over the keys, for the batch the model runs
on. :func:`capture_attention` watches every module's output and positional
inputs during a forward pass and keeps each such tensor once, in the order the
forward pass makes them. That finds:

* MONAI's ``SABlock`` (the probabilities are the *input* of ``attn.drop_weights``),
* vit-pytorch's ``Attention`` (the *output* of its ``attend`` softmax),
* any model that passes them through a module (an identity, a dropout),
* and attention computed by ``torch.nn.functional.scaled_dot_product_attention``
  (this package's ``ViT3D``, MONAI's flash-attention path, timm): while the
  context is open, calls to that function from the capturing thread go to an
  explicit ``softmax(q k^T * scale + mask) v`` that yields the same result
  and records its probabilities, so they can be read and differentiated
  (through a torch function mode: nothing is patched).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from napari_vitcam.core.errors import TargetLayerError
from napari_vitcam.engine.introspect import find_block_list

ROW_SUM_TOLERANCE = 1e-3

NO_ATTENTION = (
    "the model computes no attention probabilities the engine can read (a (batch, heads, T, T) tensor "
    "whose rows sum to 1, passed through a module or scaled_dot_product_attention): "
    "use a layer method such as Grad-CAM with a target layer, or occlusion"
)


@dataclass(frozen=True)
class CapturedAttention:
    """One attention matrix seen during a forward pass.

    Args:
        name: where it was read, e.g. ``"blocks.0.attn.drop_weights (input)"``.
        block: the transformer block it lies in (its dotted name), or "" when
            the model has no block list the engine recognises.
        probs: (B, heads, T, T) the probabilities, part of the autograd graph
            when the forward pass built one.
    """

    name: str
    block: str
    probs: torch.Tensor


def is_attention(tensor: object, batch: int) -> bool:
    """True for a (batch, heads, T, T) floating tensor, T > 1, non-negative, with rows summing to 1."""
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4 or not tensor.is_floating_point():
        return False
    if tensor.shape[0] != batch or tensor.shape[2] != tensor.shape[3] or tensor.shape[3] < 2:
        return False
    with torch.no_grad():
        values = tensor.detach()
        if bool((values < -ROW_SUM_TOLERANCE).any()):
            return False
        return bool(((values.float().sum(dim=-1) - 1.0).abs() < ROW_SUM_TOLERANCE).all())


def _explicit_sdpa(record):
    """An explicit ``scaled_dot_product_attention`` that hands its probabilities to ``record``."""

    def sdpa(
        query,
        key,
        value,
        attn_mask=None,
        dropout_p=0.0,
        is_causal=False,
        scale=None,
        enable_gqa=False,
    ):
        if enable_gqa and query.shape[-3] != key.shape[-3]:
            repeat = query.shape[-3] // key.shape[-3]
            key = key.repeat_interleave(repeat, dim=-3)
            value = value.repeat_interleave(repeat, dim=-3)
        factor = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
        logits = (query * factor) @ key.transpose(-2, -1)
        length, source = query.shape[-2], key.shape[-2]
        if is_causal:
            keep = torch.ones(length, source, dtype=torch.bool, device=query.device).tril()
            logits = logits.masked_fill(~keep, float("-inf"))
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                logits = logits.masked_fill(~attn_mask, float("-inf"))
            else:
                logits = logits + attn_mask
        probs = logits.softmax(dim=-1)
        record(probs)
        if dropout_p > 0.0:
            probs = F.dropout(probs, dropout_p, training=True)
        return probs @ value

    return sdpa


_FUSED_SDPA = torch._C._nn.scaled_dot_product_attention
"""torch's own function, whatever name a model reached it by (``F.scaled_dot_product_attention`` or an import)."""


class _ExplicitAttentionMode(TorchFunctionMode):
    """Sends ``scaled_dot_product_attention`` calls to an explicit twin; every other call goes on unchanged."""

    def __init__(self, explicit: Callable[..., torch.Tensor]):
        super().__init__()
        self.explicit = explicit

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _FUSED_SDPA:
            return self.explicit(*args, **kwargs)
        return func(*args, **kwargs)


@contextmanager
def explicit_attention(record) -> Iterator[None]:
    """Compute ``scaled_dot_product_attention`` explicitly inside the context, calling ``record(probs)``.

    Nothing is patched: a torch function mode intercepts the calls, and torch
    keeps function modes per thread, so only the thread that opened the
    context takes the explicit path. Other threads (another model explained
    at the same time) keep torch's fused function and never see this
    context's records; a model that imported the function under its own
    name is intercepted too.
    """
    with _ExplicitAttentionMode(_explicit_sdpa(record)):
        yield


def _block_of(name: str, blocks: list[str]) -> str:
    for block in blocks:
        if name == block or name.startswith(block + "."):
            return block
    return ""


@contextmanager
def capture_attention(model: nn.Module, batch: int) -> Iterator[list[CapturedAttention]]:
    """Every attention matrix the forward passes inside the context compute, in order.

    Each tensor is kept once (a softmax output that a dropout then receives is
    one matrix). All hooks are removed and ``scaled_dot_product_attention`` is
    restored on exit, also when the body raises.

    Args:
        model: the model whose forward pass runs inside the context.
        batch: the batch size of that forward pass (a (B, heads, T, T) tensor
            must have B = batch).
    """
    found: list[CapturedAttention] = []
    seen: set[tuple] = set()
    found_blocks = find_block_list(model)
    blocks = found_blocks[1] if found_blocks is not None else []

    def keep(name: str, tensor: torch.Tensor) -> None:
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()))
        if key in seen or not is_attention(tensor, batch):
            return
        seen.add(key)
        found.append(CapturedAttention(name, _block_of(name.split(" ")[0], blocks), tensor))

    current: list[str] = []

    def pre_hook(module_name: str):
        def hook(_module, _args):
            current.append(module_name)

        return hook

    def post_hook(module_name: str):
        def hook(_module, args, output):
            if current and current[-1] == module_name:
                current.pop()
            for arg in args:
                if isinstance(arg, torch.Tensor):
                    keep(f"{module_name} (input)", arg)
            if isinstance(output, torch.Tensor):
                keep(f"{module_name} (output)", output)
            elif isinstance(output, (tuple, list)):
                for item in output:
                    if isinstance(item, torch.Tensor):
                        keep(f"{module_name} (output)", item)

        return hook

    def from_sdpa(probs: torch.Tensor) -> None:
        where = current[-1] if current else "scaled_dot_product_attention"
        keep(f"{where} (scaled_dot_product_attention)", probs)

    handles = []
    try:
        for module_name, module in model.named_modules():
            label = module_name or "model"
            handles.append(module.register_forward_pre_hook(pre_hook(label)))
            handles.append(module.register_forward_hook(post_hook(label)))
        with explicit_attention(from_sdpa):
            yield found
    finally:
        for handle in handles:
            handle.remove()


def check_attention(found: list[CapturedAttention]) -> int:
    """The token count T shared by every captured attention; a one-line error when there is none or they differ."""
    if not found:
        raise TargetLayerError(NO_ATTENTION)
    lengths = {a.probs.shape[-1] for a in found}
    if len(lengths) != 1:
        raise TargetLayerError(
            f"the model's attention matrices cover different token counts ({sorted(lengths)}; windowed or "
            "hierarchical attention): attention methods need one token sequence, use a layer method"
        )
    return lengths.pop()
