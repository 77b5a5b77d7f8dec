"""Which layers make good Grad-CAM targets.

For a ViT: each transformer block's ``norm1`` and the block's output, in
forward order. For a CNN: its last stages (the model's top-level children, and
the children of a top-level ``Sequential`` of mixed layers such as DenseNet's
``features``) whose output is a map of more than one cell. A probe (one forward and
one backward on an example input) orders them as the forward pass calls them,
marks the targets whose gradient is identically zero at the tokens, such as
the last block's output of a cls-token ViT, and recommends the last target
that has a gradient: for a cls-token ViT that is the last block's ``norm1``,
as the method write-up explains. After the blocks comes the final norm, where
the head reads its patch tokens (a mean- or attention-pooled ViT): there
Grad-CAM gives each token's own class score, and it is the recommended target.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import nn

from napari_vitcam.core.errors import LayoutError
from napari_vitcam.engine.capture import capture_outputs, eval_mode, model_lock, record_calls
from napari_vitcam.engine.introspect import (
    check_input,
    declared_patch_size,
    find_block_list,
    find_patch_embedding,
    find_stage_lists,
    read_logits,
    resolve_module,
)
from napari_vitcam.engine.token_grid import TokenGrid, as_tokens, grid_from_patches

MAX_STAGES = 4
_CONTAINERS = (nn.Sequential, nn.ModuleList)


@dataclass(frozen=True)
class TargetCandidate:
    """A layer the engine can explain at."""

    name: str
    kind: str  # "norm1", "block", "final_norm", "swin_block", "swin_stage" or "stage"
    zero_gradient: bool
    recommended: bool = False

    @property
    def label(self) -> str:
        marks = " (recommended)" if self.recommended else ""
        marks += " (zero gradient)" if self.zero_gradient else ""
        return self.name + marks


@dataclass(frozen=True)
class _Probed:
    candidate: TargetCandidate
    ndim: int


def _first_norm(block: str, module: nn.Module) -> str | None:
    """The first LayerNorm inside ``module`` (the pre-norm of its attention), as a dotted name."""
    for name, child in module.named_modules():
        if isinstance(child, nn.LayerNorm):
            return f"{block}.{name}"
    return None


def block_candidates(model: nn.Module) -> list[tuple[str, str]]:
    """``(name, kind)`` for each block of the block list and its ``norm1``, and the final norm.

    A block held as a ``ModuleList`` that is never called as a module
    (vit-pytorch's ``[attention, feed-forward]`` pairs) offers its first
    LayerNorm instead, the pre-norm its attention reads (vit-pytorch's
    ``layers.i.0.norm``). The final norm is the ``norm`` LayerNorm beside the
    block list (``norm`` of timm's and MONAI's ViTs and of
    :class:`~napari_vitcam.models.architectures.vit3d.ViT3D`, vit-pytorch's
    ``transformer.norm``).
    """
    names = dict(model.named_modules())
    found = find_block_list(model)
    out: list[tuple[str, str]] = []
    for block in found[1] if found is not None else []:
        if isinstance(names[block], nn.ModuleList):
            norm = _first_norm(block, names[block])
            if norm is not None:
                out.append((norm, "norm1"))
            continue
        if f"{block}.norm1" in names:
            out.append((f"{block}.norm1", "norm1"))
        out.append((block, "block"))
    if found is not None:
        parent = found[0].rpartition(".")[0]
        final = f"{parent}.norm" if parent else "norm"
        if isinstance(names.get(final), nn.LayerNorm):
            out.append((final, "final_norm"))
    return out


def hierarchical_candidates(model: nn.Module) -> list[tuple[str, str]]:
    """For a transformer with several stages of blocks (Swin): every block, then each stage's output.

    A stage is the module that holds a block list (MONAI's ``BasicLayer``,
    ``layers2.0``), where the stage's downsampling has run. Empty for a plain ViT.
    """
    lists = find_stage_lists(model)
    if len(lists) < 2:
        return []
    names = dict(model.named_modules())
    out: list[tuple[str, str]] = []
    for list_name, blocks in lists:
        out += [(block, "swin_block") for block in blocks]
        parent = list_name.rpartition(".")[0]
        if parent and not isinstance(names[parent], _CONTAINERS):
            out.append((parent, "swin_stage"))
    return out


def _is_feature_container(module: nn.Module) -> bool:
    """A plain Sequential/ModuleList of mixed layers (DenseNet's ``features``), not a stage of like blocks."""
    return type(module) in _CONTAINERS and len({type(c) for c in module.children()}) > 1


def stage_candidates(model: nn.Module) -> list[tuple[str, str]]:
    """The top-level children; a top-level Sequential of mixed layers also gives its own children."""
    out: list[tuple[str, str]] = []
    for name, child in model.named_children():
        if _is_feature_container(child):
            out += [(f"{name}.{inner}", "stage") for inner, _ in child.named_children()]
        out.append((name, "stage"))
    return out


def _once_each(
    calls: list[tuple[str, torch.Tensor]], kinds: Mapping[str, str] | None = None
) -> list[tuple[str, torch.Tensor]]:
    """Calls of modules that ran once, with a tensor two modules returned kept under the later name.

    The later one is the outer module (``layer4`` after ``layer4.1``) or an
    in-place op after the layer it modified (``relu`` after ``conv``), whose
    values the tensor holds. A transformer's own candidate (a final norm) keeps
    its name over a stage that returns its output (an encoder that ends in its
    final norm, as vit-pytorch's ``transformer`` or UNETR's ``vit`` do).
    """
    kinds = kinds or {}
    counts: dict[str, int] = {}
    for name, _ in calls:
        counts[name] = counts.get(name, 0) + 1
    once = [(n, t) for n, t in calls if counts[n] == 1 and t.requires_grad]
    last_name: dict[int, str] = {}
    for n, t in once:
        earlier = last_name.get(id(t))
        if earlier is not None and kinds.get(earlier, "stage") != "stage" and kinds.get(n, "stage") == "stage":
            continue
        last_name[id(t)] = n
    return [(n, t) for n, t in once if last_name[id(t)] == n]


def patch_grid(model: nn.Module, input_shape: tuple[int, ...]) -> TokenGrid | None:
    patch = find_patch_embedding(model)
    if patch is not None:
        return grid_from_patches(input_shape, tuple(patch[1].stride))
    declared = declared_patch_size(model)
    return grid_from_patches(input_shape, declared) if declared is not None else None


def _probe(name, kind, tensor, gradient, grid, input_shape, module) -> _Probed | None:
    """The candidate ``name`` makes, or None when its output is not a map of more than one cell."""
    try:
        _tokens, layout = as_tokens(tensor.detach(), grid, input_shape, module=module, name=name)
    except LayoutError:
        return None
    if layout.grid.n_tokens < 2:
        return None
    if gradient is None:
        zero = True
    else:
        grads, _ = as_tokens(gradient, grid, input_shape, layout=layout.layout, module=module, name=name)
        zero = not bool(grads.any())
    return _Probed(TargetCandidate(name, kind, zero), tensor.ndim)


def _choose(probed: list[_Probed]) -> list[TargetCandidate]:
    """The ViT's blocks when they carry tokens, else the CNN's last stages; the last with a gradient recommended."""
    blocks = [p.candidate for p in probed if p.candidate.kind != "stage" and p.ndim == 3]
    # The final norm only where the head reads its patch tokens (a pooled head, not a cls token).
    blocks = [c for c in blocks if not (c.kind == "final_norm" and c.zero_gradient)]
    swin = [p.candidate for p in probed if p.candidate.kind in ("swin_block", "swin_stage") and p.ndim == 5]
    stages = [p.candidate for p in probed if p.candidate.kind == "stage" and p.ndim == 5][-MAX_STAGES:]
    result = blocks or swin or stages
    usable = [i for i, c in enumerate(result) if not c.zero_gradient]
    if usable:
        result[usable[-1]] = replace(result[usable[-1]], recommended=True)
    return result


def list_targets(
    model: nn.Module,
    example: torch.Tensor,
    *,
    score_layer: str | None = None,
) -> list[TargetCandidate]:
    """Candidate targets in forward order, probed on ``example`` (B, C, D, H, W).

    Only layers whose output the engine can read as a map of more than one
    cell over the input are listed. The recommended one is the last with a
    non-zero gradient for the example's predicted class.
    """
    example = check_input(example, model)
    blocks = hierarchical_candidates(model) or block_candidates(model)
    taken = {name for name, _ in blocks}
    candidates = blocks + [c for c in stage_candidates(model) if c[0] not in taken]
    kinds = dict(candidates)
    modules = {name: resolve_module(model, name)[1] for name in kinds}
    watched = {}
    if score_layer is not None:
        watched["score"] = resolve_module(model, score_layer, "score layer")[1]
    input_shape = tuple(int(s) for s in example.shape[2:])
    grid = patch_grid(model, input_shape)
    with _probing(model, modules, watched) as (calls, seen):
        x = example.detach().clone().requires_grad_(True)
        output = model(x)
        logits = seen["score"][-1] if score_layer is not None else read_logits(output)
        score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
        once = _once_each(calls, kinds)
        tensors = [t for _, t in once]
        grads = torch.autograd.grad(score, tensors, allow_unused=True) if tensors else ()
    probed = [
        _probe(name, kinds[name], tensor, grad, grid, input_shape, modules[name])
        for (name, tensor), grad in zip(once, grads, strict=False)
    ]
    return _choose([p for p in probed if p is not None])


@contextmanager
def _probing(model: nn.Module, modules: Mapping[str, nn.Module], watched: Mapping[str, nn.Module]):
    """Eval mode, grad on, and the hooks of a probe, all undone on exit."""
    with (
        model_lock(model),
        eval_mode(model),
        torch.inference_mode(False),
        torch.enable_grad(),
        record_calls(modules) as calls,
        capture_outputs(watched) as seen,
    ):
        yield calls, seen


def recommended_target(candidates: list[TargetCandidate]) -> str | None:
    for candidate in candidates:
        if candidate.recommended:
            return candidate.name
    return None
