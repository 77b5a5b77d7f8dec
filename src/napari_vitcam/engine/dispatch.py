"""One entry point for every explainer: :func:`explain_tokens`.

It looks at the explainer's kind and gathers what that kind needs:

* a :class:`~napari_vitcam.engine.explainers.base.LayerExplainer` runs through
  :func:`~napari_vitcam.engine.cam.grad_cam` (one target layer);
* an :class:`~napari_vitcam.engine.explainers.base.AttentionExplainer` gets
  every block's attention probabilities, found by probing the model
  (:mod:`napari_vitcam.engine.attention`), their gradients when it asks for
  them, and what the head reads; no target layer;
* a :class:`~napari_vitcam.engine.explainers.base.PerturbationExplainer` gets
  a scoring function and the token grid, and runs the model forward only.

Every kind runs batched on the model's device; hooks are removed and the
model's flags restored on exit, also when an exception is raised.
"""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack

import torch
from torch import nn

from napari_vitcam.core.errors import DegenerateTargetError, InputError, LayoutError, TargetLayerError
from napari_vitcam.core.vocabulary import Upsample
from napari_vitcam.engine.attention import capture_attention, check_attention
from napari_vitcam.engine.cam import (
    CamResult,
    ClassIndex,
    Progress,
    _class_indices,
    _own_logits,
    _patch_grid,
    _Run,
    _sync,
    grad_cam,
    make_scorer,
)
from napari_vitcam.engine.capture import cancellable, capture_outputs, eval_mode, model_lock, with_gradients
from napari_vitcam.engine.explainers.base import (
    AttentionExplainer,
    AttentionInputs,
    Explainer,
    LayerExplainer,
    PerturbationExplainer,
    PerturbationInputs,
)
from napari_vitcam.engine.explainers.registry import get_explainer
from napari_vitcam.engine.introspect import check_input, find_patch_embedding, read_logits, resolve_module
from napari_vitcam.engine.token_grid import Layout, TokenGrid, TokenLayout

ATTENTION_TARGET = "attention, every block"
PERTURBATION_TARGET = "input patches"


def _explainer(method: str | Explainer) -> Explainer:
    return method if isinstance(method, Explainer) else get_explainer(method)


def explain_tokens(
    model: nn.Module,
    x: torch.Tensor,
    method: str | Explainer = "gradcam",
    target_layer: str | nn.Module | None = None,
    class_idx: ClassIndex = None,
    *,
    upsample: Upsample = "smooth",
    score_layer: str | nn.Module | None = None,
    layout: Layout = "auto",
    token_grid: tuple[int, int, int] | None = None,
    out_shape: tuple[int, int, int] | None = None,
    batch_size: int = 16,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> CamResult:
    """Explain ``model`` on ``x`` (B, C, D, H, W) with any registered method.

    Args:
        model: a classifier; its output is (or leads with) the (B, classes) logits.
        x: the batch to explain.
        method: a registry name (see ``EXPLAINERS``) or an explainer instance.
        target_layer: the layer a layer method reads (a dotted name or the
            module); attention and perturbation methods read none (it is ignored).
        class_idx: None (each sample's predicted class), an int, or one per sample.
        upsample: ``"smooth"`` or ``"patch"`` (see ``docs/engine.md``).
        score_layer: the module whose output is the class score, when the
            model's output is not (a head ending in Tanh or softmax).
        layout: how a layer method reads its target's output (``"auto"``: established from the model).
        token_grid: the token grid (d, h, w), when the model does not say it.
        out_shape: the voxel shape of the map (default: the input's).
        batch_size: how many perturbed inputs run at once (occlusion, Score-CAM).
        progress: called with each stage's name.
        cancel: setting it stops the run with :class:`~napari_vitcam.core.errors.Cancelled`.

    Returns:
        A :class:`~napari_vitcam.engine.cam.CamResult`: ``token_cam`` (B, d, h, w)
        on the grid and ``cam`` in voxels, raw (in the method's units, not normalised).
    """
    explainer = _explainer(method)
    with model_lock(model):  # one explanation at a time per model (hooks, flags)
        if isinstance(explainer, LayerExplainer):
            if target_layer is None:
                raise TargetLayerError(
                    f"method {explainer.name!r} ({explainer.label}) reads one layer: pass target_layer "
                    "(list the candidates with list_targets)"
                )
            return grad_cam(
                model,
                x,
                target_layer,
                class_idx,
                upsample=upsample,
                method=explainer.name,
                score_layer=score_layer,
                layout=layout,
                token_grid=token_grid,
                out_shape=out_shape,
                progress=progress,
                cancel=cancel,
                batch_size=batch_size,
            )
        if isinstance(explainer, AttentionExplainer):
            return _explain_attention(
                model, x, explainer, class_idx, upsample, score_layer, token_grid, out_shape, progress, cancel
            )
        if isinstance(explainer, PerturbationExplainer):
            return _explain_perturbation(
                model,
                x,
                explainer,
                class_idx,
                upsample,
                score_layer,
                token_grid,
                out_shape,
                batch_size,
                progress,
                cancel,
            )
        raise InputError(f"method {explainer.name!r} is of no kind the engine runs")


def _score_module(model: nn.Module, score_layer) -> tuple[str | None, nn.Module | None]:
    if score_layer is None:
        return None, None
    return resolve_module(model, score_layer, "score layer")


def _grid_or_error(model, input_shape, seen, token_grid) -> TokenGrid:
    embed_shape = tuple(seen["embed"][-1].shape[2:]) if seen.get("embed") else None
    grid = _patch_grid(model, input_shape, embed_shape, token_grid)
    if grid is None:
        raise LayoutError(
            "the model has no patch embedding (a Conv3d with kernel = stride) or declared patch size "
            "to place its tokens: pass token_grid=(d, h, w)"
        )
    return grid


def _watched(model: nn.Module, score_module: nn.Module | None) -> dict[str, nn.Module]:
    watched: dict[str, nn.Module] = {}
    patch = find_patch_embedding(model)
    if patch is not None:
        watched["embed"] = patch[1]
    if score_module is not None:
        watched["score"] = score_module
    return watched


def _logits(output, seen, score_name) -> torch.Tensor:
    logits = seen["score"][-1] if score_name is not None else read_logits(output)
    if logits.ndim != 2:
        raise InputError(f"the score layer output has shape {tuple(logits.shape)}, expected (batch, classes)")
    return logits


def _scores(output, seen, score_name) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The scores explained, and the model's own output where a score layer is named (for its probabilities)."""
    logits = _logits(output, seen, score_name)
    return logits, (_own_logits(output, logits) if score_name is not None else None)


def attention_prefix(tokens: int, grid: TokenGrid) -> int:
    """How many tokens of an attention over ``tokens`` come before ``grid``'s; a one-line error when it has fewer."""
    prefix = tokens - grid.n_tokens
    if prefix < 0:
        raise LayoutError(
            f"the attention covers {tokens} tokens, fewer than the {grid.n_tokens} of the token grid {grid.shape}: "
            "pass the right token_grid=(d, h, w)"
        )
    return prefix


def readout_from_gradient(gradient: torch.Tensor) -> torch.Tensor:
    """(B, T) what the head reads at the last block's output, from the gradient of the last attention.

    The class score depends on row i of the last attention exactly when the
    head reads token i after it (the rest of the block works token by token),
    so the rows with a non-zero gradient are the tokens the head reads: the
    cls token alone, or every token of a pooled head. They are weighted equally.
    """
    read = gradient.detach().abs().sum(dim=(1, 3)) > 0
    count = read.sum(dim=1, keepdim=True)
    if bool((count == 0).any()):
        raise DegenerateTargetError(
            "the class score does not depend on the last attention block (its gradient there is zero): "
            "the head does not read the transformer's tokens; use a layer method or occlusion"
        )
    return read.float() / count.float()


@with_gradients
def _explain_attention(
    model, x, explainer: AttentionExplainer, class_idx, upsample, score_layer, token_grid, out_shape, progress, cancel
) -> CamResult:
    x = check_input(x, model)
    score_name, score_module = _score_module(model, score_layer)
    run = _Run.start(model, x, progress, upsample, out_shape, score_name)
    with ExitStack() as stack:
        stack.enter_context(eval_mode(model))
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        found = stack.enter_context(capture_attention(model, x.shape[0]))
        seen = stack.enter_context(capture_outputs(_watched(model, score_module)))
        stack.enter_context(cancellable(model, cancel))
        run.report("forward")
        start = time.perf_counter()
        xd = x.detach().to(run.device).clone().requires_grad_(True)
        logits, own_logits = _scores(model(xd), seen, score_name)
        _sync(run.device)
        run.timings["forward"] = time.perf_counter() - start
    tokens = check_attention(found)
    grid = _grid_or_error(model, run.input_shape, seen, token_grid)
    prefix = attention_prefix(tokens, grid)
    classes = _class_indices(class_idx, logits)

    run.report("backward")
    start = time.perf_counter()
    probs = [a.probs for a in found]
    wanted = probs if explainer.needs_gradients else probs[-1:]
    score = logits.gather(1, classes[:, None]).sum()
    grads = torch.autograd.grad(score, wanted, allow_unused=True)
    grads = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(wanted, grads, strict=False))
    _sync(run.device)
    run.timings["backward"] = time.perf_counter() - start

    run.report("map")
    start = time.perf_counter()
    with torch.no_grad():
        readout = readout_from_gradient(grads[-1])
        inputs = AttentionInputs(
            attentions=[p.detach() for p in probs],
            gradients=[g.detach() for g in grads] if explainer.needs_gradients else None,
            prefix=prefix,
            readout=readout,
            grid=grid,
        )
        token_cam = explainer.token_map(inputs).reshape(-1, *grid.shape)
        _sync(run.device)
        run.timings["map"] = time.perf_counter() - start
        scored, layers = (logits, own_logits, classes), tuple(a.name for a in found)
        return run.result(
            token_cam, TokenLayout("tokens", prefix, grid), scored, ATTENTION_TARGET, explainer.name, layers
        )


def _explain_perturbation(
    model,
    x,
    explainer: PerturbationExplainer,
    class_idx,
    upsample,
    score_layer,
    token_grid,
    out_shape,
    batch_size,
    progress,
    cancel,
) -> CamResult:
    x = check_input(x, model)
    score_name, score_module = _score_module(model, score_layer)
    run = _Run.start(model, x, progress, upsample, out_shape, score_name)
    with ExitStack() as stack:
        stack.enter_context(eval_mode(model))
        stack.enter_context(torch.no_grad())
        run.report("forward")
        start = time.perf_counter()
        xd = x.to(run.device)
        with capture_outputs(_watched(model, score_module)) as seen:
            logits, own_logits = _scores(model(xd), seen, score_name)
        grid = _grid_or_error(model, run.input_shape, seen, token_grid)
        classes = _class_indices(class_idx, logits)
        _sync(run.device)
        run.timings["forward"] = time.perf_counter() - start

        run.report("map")
        start = time.perf_counter()
        stack.enter_context(cancellable(model, cancel))
        maps = []
        for b in range(xd.shape[0]):
            scorer = make_scorer(model, int(classes[b]), score_module)
            maps.append(explainer.token_map(PerturbationInputs(xd[b : b + 1], scorer, grid, batch_size)))
        token_cam = torch.cat(maps).reshape(-1, *grid.shape)
        _sync(run.device)
        run.timings["map"] = time.perf_counter() - start
        scored = (logits, own_logits, classes)
        return run.result(token_cam, TokenLayout("tokens", 0, grid), scored, PERTURBATION_TARGET, explainer.name)
