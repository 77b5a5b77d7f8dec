"""Which layers make good Grad-CAM targets.

For a ViT: each transformer block's ``norm1`` and its output, in forward order.
For a CNN: its last stages. A probe (one forward and one backward on an example
input) marks the targets whose gradient is identically zero at the tokens,
such as the last block's output of a cls-token ViT, and recommends the last
target that has a gradient: for a cls-token ViT that is the last block's
``norm1``, as the method write-up explains.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .hooks import capture_outputs, eval_mode
from .modules import read_logits, resolve_module
from .token_grid import as_tokens, find_patch_embedding, declared_patch_size, grid_from_patches
from .errors import LayoutError


@dataclass(frozen=True)
class TargetCandidate:
    """A layer the engine can explain at."""

    name: str
    kind: str  # "norm1", "block" or "stage"
    zero_gradient: bool
    recommended: bool = False

    @property
    def label(self) -> str:
        marks = " (recommended)" if self.recommended else ""
        marks += " (zero gradient)" if self.zero_gradient else ""
        return self.name + marks


def find_block_list(model: nn.Module) -> tuple[str, list[str]] | None:
    """The longest ModuleList/Sequential of two or more same-class, non-leaf modules."""
    best: tuple[str, list[str]] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        children = list(module.named_children())
        if len(children) < 2 or len({type(c) for _, c in children}) != 1:
            continue
        if not any(True for _ in children[0][1].children()):
            continue
        if best is None or len(children) > len(best[1]):
            prefix = f"{name}." if name else ""
            best = (name, [prefix + child for child, _ in children])
    return best


def _static_candidates(model: nn.Module) -> list[tuple[str, str]]:
    """Blocks (with their norm1) of the block list, then the model's top-level children."""
    names = dict(model.named_modules())
    found = find_block_list(model)
    out: list[tuple[str, str]] = []
    if found is not None:
        for block in found[1]:
            if f"{block}.norm1" in names:
                out.append((f"{block}.norm1", "norm1"))
            out.append((block, "block"))
    taken = {name for name, _ in out}
    out += [(name, "stage") for name, _ in model.named_children() if name not in taken]
    return out


def list_targets(
    model: nn.Module,
    example: torch.Tensor,
    *,
    score_layer: str | None = None,
) -> list[TargetCandidate]:
    """Candidate targets in forward order, probed on ``example`` (B, C, D, H, W).

    Only layers whose output the engine can read as a map over the token grid
    are listed. The recommended one is the last with a non-zero gradient.
    """
    candidates = _static_candidates(model)
    modules = {name: resolve_module(model, name)[1] for name, _ in candidates}
    if score_layer is not None:
        modules["__score__"] = resolve_module(model, score_layer, "score layer")[1]
    input_shape = tuple(example.shape[2:])
    patch = find_patch_embedding(model)
    declared = declared_patch_size(model)
    if patch is not None:
        grid = grid_from_patches(input_shape, tuple(patch[1].stride))
    elif declared is not None:
        grid = grid_from_patches(input_shape, declared)
    else:
        grid = None
    x = example.detach().clone().requires_grad_(True)
    with eval_mode(model), torch.inference_mode(False), torch.enable_grad(), capture_outputs(modules) as seen:
        output = model(x)
        logits = seen["__score__"][-1] if score_layer is not None else read_logits(output)
        score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
        names = [n for n, _ in candidates if len(seen[n]) == 1 and seen[n][0].requires_grad]
        grads = torch.autograd.grad(score, [seen[n][0] for n in names], allow_unused=True)
    result: list[TargetCandidate] = []
    kinds = dict(candidates)
    for name, grad in zip(names, grads):
        try:
            tokens, _ = as_tokens(seen[name][0].detach(), grid, input_shape, module=modules[name], name=name)
        except LayoutError:
            continue
        if grad is None:
            zero = True
        else:
            grad_tokens, _ = as_tokens(grad, grid, input_shape, module=modules[name], name=name)
            zero = bool((grad_tokens == 0).all())
        result.append(TargetCandidate(name, kinds[name], zero))
    blocks = [c for c in result if c.kind != "stage"]
    if blocks and seen[blocks[0].name][0].ndim == 3:
        result = blocks  # a ViT: its transformer blocks
    else:
        result = [c for c in result if c.kind == "stage"][-4:]  # a CNN: its last stages
    usable = [i for i, c in enumerate(result) if not c.zero_gradient]
    if usable:
        best = usable[-1]
        result[best] = TargetCandidate(result[best].name, result[best].kind, False, True)
    return result


def recommended_target(candidates: list[TargetCandidate]) -> str | None:
    for candidate in candidates:
        if candidate.recommended:
            return candidate.name
    return None
