"""Grad-CAM for 3D models, computed on the model's device.

``grad_cam`` runs one forward pass and one backward pass from the class score
to the target layer only: the layers before the target run without building a
graph, and no parameter gradients are computed. See ``docs/engine.md``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from napari_vitcam.core.errors import DegenerateTargetError, InputError, ModelOutputError, TargetLayerError
from napari_vitcam.core.vocabulary import Upsample
from napari_vitcam.engine.capture import cancellable, capture_as_leaf, capture_outputs, eval_mode, model_lock
from napari_vitcam.engine.explainers.base import LayerExplainer, LayerInputs, Scorer
from napari_vitcam.engine.explainers.registry import get_explainer
from napari_vitcam.engine.introspect import (
    check_input,
    declared_patch_size,
    ends_in_sigmoid,
    find_patch_embedding,
    model_device,
    read_logits,
    resolve_module,
)
from napari_vitcam.engine.layout_check import establish_layout
from napari_vitcam.engine.token_grid import Layout, TokenGrid, TokenLayout, as_tokens, grid_from_patches
from napari_vitcam.engine.voxel_map import tokens_to_voxels

Progress = Callable[[str], None]
ClassIndex = int | Sequence[int] | torch.Tensor | None


def as_probabilities(scores: torch.Tensor, *, sigmoid_output: bool = False) -> torch.Tensor:
    """(B, classes) model output as probabilities.

    One output (a binary model trained with a logistic loss) is a logit: its
    sigmoid, unless the model ends in a sigmoid (``sigmoid_output``), whose
    output is the probability already. Several outputs: as they are where they
    already are a distribution (a softmax head), else their softmax.
    """
    scores = scores.float()
    if scores.shape[1] == 1:
        return scores if sigmoid_output else scores.sigmoid()
    if bool(((scores >= 0) & (scores <= 1)).all()) and torch.allclose(
        scores.sum(dim=1), torch.ones(len(scores), device=scores.device), atol=1e-5
    ):
        return scores
    return scores.softmax(dim=1)


@dataclass(frozen=True)
class CamResult:
    """What :func:`grad_cam` or :func:`~napari_vitcam.engine.dispatch.explain_tokens` computed.

    Tensors stay on the model's device. ``cam`` (B, D, H, W) and ``token_cam``
    (B, d, h, w) are raw: in the method's units (class-score units for the CAM
    family), not normalised. ``logits`` are the scores explained (the
    ``score_layer``'s output when one is named); ``output_logits`` are the
    model's own output, where it reads as (batch, classes) scores.
    ``target_layer`` names the layer a layer method read; for an attention
    method ``attention_layers`` lists where each block's attention was read.
    """

    cam: torch.Tensor
    token_cam: torch.Tensor
    logits: torch.Tensor
    class_idx: torch.Tensor
    target_layer: str
    method: str
    upsample: str
    layout: TokenLayout
    score_layer: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    output_logits: torch.Tensor | None = None
    attention_layers: tuple[str, ...] = ()
    sigmoid_output: bool = False

    @property
    def grid(self) -> TokenGrid:
        return self.layout.grid

    @property
    def probabilities(self) -> torch.Tensor:
        """What the model itself outputs, as probabilities.

        The softmax of the model's own output (not of a score layer before its
        output activation); an output that already is a distribution (a
        softmax head) is returned as it is; one output is a logit (its sigmoid)
        unless the model ends in a sigmoid (:func:`as_probabilities`).
        """
        return as_probabilities(
            self.output_logits if self.output_logits is not None else self.logits, sigmoid_output=self.sigmoid_output
        )

    def numpy(self) -> np.ndarray:
        """The voxel map as a float32 numpy array (B, D, H, W)."""
        return self.cam.detach().float().cpu().numpy()


def _own_logits(output: object, scores: torch.Tensor) -> torch.Tensor | None:
    """The model's own output as (batch, classes) like ``scores``, or None where it is not."""
    try:
        logits = read_logits(output)
    except ModelOutputError:
        return None
    return logits.detach() if logits.shape == scores.shape else None


def _class_indices(class_idx: ClassIndex, logits: torch.Tensor) -> torch.Tensor:
    batch, classes = logits.shape
    if class_idx is None:
        return logits.argmax(dim=1)
    try:
        given = torch.as_tensor(class_idx)
    except (TypeError, ValueError, RuntimeError):
        given = None
    if given is None or given.is_floating_point() or given.is_complex() or given.dtype == torch.bool:
        raise InputError(
            f"class_idx {class_idx!r} is not a class index: give an integer, or one integer per sample"
        )  # a float would be truncated to another class, a boolean read as 0 or 1
    index = given.to(device=logits.device, dtype=torch.long).reshape(-1)
    if index.numel() == 1:
        index = index.expand(batch)
    if index.numel() != batch:
        raise InputError(f"class_idx has {index.numel()} entries for a batch of {batch}: give one per sample")
    if bool(((index < 0) | (index >= classes)).any()):
        raise InputError(f"class_idx {index.tolist()} out of range: the model has {classes} classes")
    return index.clone()


def _patch_grid(model: nn.Module, input_shape, embed_shape, token_grid) -> TokenGrid | None:
    patch = find_patch_embedding(model)
    patch_size = tuple(patch[1].stride) if patch is not None else declared_patch_size(model)
    if token_grid is not None:
        shape = tuple(int(g) for g in token_grid)
        fits = patch_size is not None and all(
            s // p == g for s, p, g in zip(input_shape, patch_size, shape, strict=False)
        )
        if fits:
            cell = tuple(float(p) for p in patch_size)  # type: ignore[union-attr]
        else:  # the patch found is not what made these tokens (a CNN stem before the ViT): spread them over the input
            cell = tuple(s / g for s, g in zip(input_shape, shape, strict=False))
        return TokenGrid(shape, cell, input_shape)  # type: ignore[arg-type]
    if embed_shape is not None and patch is not None:
        stride = tuple(float(s) for s in patch[1].stride)
        return TokenGrid(tuple(embed_shape), stride, input_shape)  # type: ignore[arg-type]
    if patch_size is not None:
        return grid_from_patches(input_shape, patch_size)
    return None


def _suggest_working_target(model, x, target_name, score_layer) -> str:
    from napari_vitcam.engine.targets import list_targets

    try:
        candidates = list_targets(model, x[:1], score_layer=score_layer)
    except Exception:  # the suggestion is a courtesy; the error itself must get through
        return "an earlier layer"
    working = [c.name for c in candidates if not c.zero_gradient and c.name != target_name]
    return repr(working[-1]) if working else "an earlier layer"


def make_scorer(model: nn.Module, class_index: int, score_module: nn.Module | None = None) -> Scorer:
    """A function that runs ``model`` on a batch, without gradients, and returns class ``class_index``'s score of each.

    ``score_module``: the module whose output is the score (None: the model's logits).
    """

    def score(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if score_module is None:
                return read_logits(model(batch))[:, class_index]
            with capture_outputs({"score": score_module}) as seen:
                model(batch)
            return seen["score"][-1][:, class_index]

    return score


def explain_layer_map(
    model: nn.Module,
    x: torch.Tensor,
    explainer: LayerExplainer,
    module: nn.Module,
    name: str,
    activation: torch.Tensor,
    gradient: torch.Tensor,
    logits: torch.Tensor,
    classes: torch.Tensor,
    grid: TokenGrid | None,
    input_shape: tuple[int, ...],
    layout: Layout = "auto",
) -> tuple[torch.Tensor, TokenLayout]:
    """A gradient layer method's (B, d, h, w) token map from a layer's recorded activation and gradient.

    Args:
        model: the model (run again only to establish a 5-D output's layout).
        x: the input the activation came from.
        explainer: the layer method.
        module: the layer; ``name`` its dotted name.
        activation: its output; ``gradient``: the class score's gradient there.
        logits: (B, classes) the model's output; ``classes``: (B,) the classes explained.
        grid: the model's token grid, or None.
        input_shape: the input's spatial shape.
        layout: the output's layout; ``"auto"`` establishes it (:func:`establish_layout` for 5-D outputs).
    """
    shape3 = tuple(int(s) for s in input_shape)
    if layout == "auto" and activation.ndim == 5:
        device = activation.device
        layout = establish_layout(model, x[:1].to(device), module, name, tuple(activation.shape), grid, shape3)  # type: ignore[assignment]
    with torch.no_grad():
        tokens, token_layout = as_tokens(activation, grid, shape3, layout=layout, module=module, name=name)
        grads, _ = as_tokens(gradient, grid, shape3, layout=token_layout.layout, module=module, name=name)
        scores = logits.detach().gather(1, classes[:, None])[:, 0].float()
        token_cam = explainer.token_map(LayerInputs(tokens.float(), grads.float(), scores))
    return token_cam.reshape(-1, *token_layout.grid.shape), token_layout


def upsample_timed(
    token_cam: torch.Tensor,
    grid: TokenGrid,
    out_shape: tuple[int, int, int] | None,
    upsample: Upsample,
    device: torch.device,
    report: Progress,
    timings: dict[str, float],
) -> torch.Tensor:
    """The voxel map of ``token_cam``, as the run's ``upsample`` stage: reported, and timed into ``timings``."""
    report("upsample")
    start = time.perf_counter()
    cam = tokens_to_voxels(token_cam, grid, out_shape, mode=upsample)
    _sync(device)
    timings["upsample"] = time.perf_counter() - start
    return cam


@dataclass
class _Run:
    """One explanation run, from its start to its :class:`CamResult`: where it runs, what it reports, its stage times.

    Args:
        device: the model's device (the maps are computed there).
        report: called with each stage's name.
        input_shape: the input's voxel shape (D, H, W).
        upsample: how the token map becomes a voxel map.
        out_shape: the voxel shape of the map (None: the input's).
        score_name: the score layer's name, where one is named.
        timings: seconds per stage, filled as the run goes.
    """

    device: torch.device
    report: Progress
    input_shape: tuple[int, ...]
    upsample: Upsample
    out_shape: tuple[int, int, int] | None
    score_name: str | None
    timings: dict[str, float] = field(default_factory=dict)
    sigmoid_output: bool = False

    @classmethod
    def start(
        cls,
        model: nn.Module,
        x: torch.Tensor,
        progress: Progress | None,
        upsample: Upsample,
        out_shape: tuple[int, int, int] | None,
        score_name: str | None,
    ) -> _Run:
        """The run of ``model`` on the (B, C, D, H, W) batch ``x``, on the model's device."""
        report = progress or (lambda stage: None)
        input_shape = tuple(int(s) for s in x.shape[2:])
        return cls(
            model_device(model),
            report,
            input_shape,
            upsample,
            out_shape,
            score_name,
            sigmoid_output=ends_in_sigmoid(model),
        )

    def result(
        self,
        token_cam: torch.Tensor,
        layout: TokenLayout,
        scored: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor],
        target_layer: str,
        method: str,
        attention_layers: tuple[str, ...] = (),
    ) -> CamResult:
        """The run's result: ``token_cam`` upsampled to voxels (the timed ``upsample`` stage) and what was read.

        Args:
            token_cam: (B, d, h, w) the map on ``layout``'s grid.
            layout: how the tokens were read.
            scored: the scores explained, the model's own output (where a score
                layer is named) and the class explained per sample.
            target_layer: what the method read.
            method: the explainer's registry name.
            attention_layers: where each block's attention was read (attention methods).
        """
        logits, own_logits, classes = scored
        cam = upsample_timed(
            token_cam, layout.grid, self.out_shape, self.upsample, self.device, self.report, self.timings
        )
        return CamResult(
            cam=cam,
            token_cam=token_cam,
            logits=logits.detach(),
            output_logits=own_logits,
            class_idx=classes,
            target_layer=target_layer,
            method=method,
            upsample=self.upsample,
            layout=layout,
            score_layer=self.score_name,
            timings=self.timings,
            attention_layers=attention_layers,
            sigmoid_output=self.sigmoid_output,
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    target_layer: str | nn.Module,
    class_idx: ClassIndex = None,
    *,
    upsample: Upsample = "smooth",
    method: str = "gradcam",
    score_layer: str | nn.Module | None = None,
    layout: Layout = "auto",
    token_grid: tuple[int, int, int] | None = None,
    out_shape: tuple[int, int, int] | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    batch_size: int = 16,
) -> CamResult:
    """Grad-CAM of ``model`` at ``target_layer`` for input ``x`` (B, C, D, H, W).

    ``class_idx``: None (each sample's predicted class), an int, or one per
    sample. ``score_layer``: the module whose output is the class score, when
    the model's output is not (e.g. a head that ends in Tanh or softmax).
    ``layout`` and ``token_grid`` override what is read from the model.
    ``out_shape``: the voxel shape of ``cam`` (default: the input's); another
    shape is taken to span the same extent (the volume ``x`` was resized from).
    ``progress`` is called with each stage's name; setting ``cancel`` stops the
    run at the next module call with :class:`~napari_vitcam.core.errors.Cancelled`.
    ``method`` is any layer explainer of the registry; ``batch_size`` is how
    many masked inputs a method that runs the model again (Score-CAM) scores at once.
    """
    explainer = get_explainer(method)
    if not isinstance(explainer, LayerExplainer):
        raise InputError(
            f"method {method!r} ({explainer.label}) does not read one layer's gradients: "
            "use napari_vitcam.explain_volume, which runs every method"
        )
    target_name, target = resolve_module(model, target_layer)
    score_name = None
    if score_layer is not None:
        score_name, score_module = resolve_module(model, score_layer, "score layer")
    x = check_input(x, model)
    run = _Run.start(model, x, progress, upsample, out_shape, score_name)
    patch = find_patch_embedding(model)

    with ExitStack() as stack:
        stack.enter_context(model_lock(model))  # one explanation at a time per model (hooks, flags)
        stack.enter_context(eval_mode(model))
        stack.enter_context(torch.inference_mode(False))
        capture = stack.enter_context(capture_as_leaf(target, target_name))
        watched: dict[str, nn.Module] = {}
        if patch is not None:
            watched["embed"] = patch[1]
        if score_name is not None:
            watched["score"] = score_module
        seen = stack.enter_context(capture_outputs(watched))
        stack.enter_context(cancellable(model, cancel))

        run.report("forward")
        start = time.perf_counter()
        with torch.no_grad():
            output = model(x.to(run.device))
        logits = seen["score"][-1] if score_name is not None else read_logits(output)
        own_logits = _own_logits(output, logits) if score_name is not None else None
        del output
        if logits.ndim != 2:
            raise InputError(f"the score layer output has shape {tuple(logits.shape)}, expected (batch, classes)")
        _sync(run.device)
        run.timings["forward"] = time.perf_counter() - start

        if not capture.activations:
            raise TargetLayerError(
                f"target layer {target_name!r} was not called during the forward pass: choose a layer the model uses"
            )
        if len(capture.activations) > 1:
            raise TargetLayerError(
                f"target layer {target_name!r} runs {len(capture.activations)} times per forward pass: "
                "choose a layer that runs once"
            )
        if not logits.requires_grad:
            raise TargetLayerError(
                f"the class score does not depend on target layer {target_name!r} "
                "(it runs after the score, or its output is detached): choose an earlier layer"
            )
        activation = capture.activations[0]
        classes = _class_indices(class_idx, logits)

        run.report("backward")
        start = time.perf_counter()
        gradient = None
        if explainer.needs_gradients:
            score = logits.gather(1, classes[:, None]).sum()
            (gradient,) = torch.autograd.grad(score, activation, allow_unused=True)
        if gradient is None:
            gradient = torch.zeros_like(activation)
        _sync(run.device)
        run.timings["backward"] = time.perf_counter() - start

        run.report("map")
        start = time.perf_counter()
        embed_shape = tuple(seen["embed"][-1].shape[2:]) if seen.get("embed") else None
        grid = _patch_grid(model, run.input_shape, embed_shape, token_grid)
        if layout == "auto" and activation.ndim == 5:
            calls = len(capture.activations)
            layout = establish_layout(  # type: ignore[assignment]
                model, x[:1].to(run.device), target, target_name, tuple(activation.shape), grid, run.input_shape
            )
            del capture.activations[calls:]
        with torch.no_grad():
            tokens, token_layout = as_tokens(
                activation.detach(), grid, run.input_shape, layout=layout, module=target, name=target_name
            )
            grads, _ = as_tokens(
                gradient, grid, run.input_shape, layout=token_layout.layout, module=target, name=target_name
            )
            degenerate = explainer.needs_gradients and not bool(grads.any())
            if degenerate:
                stack.close()  # hooks off and model state restored before probing for a working layer
                working = _suggest_working_target(model, x.to(run.device), target_name, score_name)
                raise DegenerateTargetError(
                    f"the class score's gradient is zero at every token of {target_name!r} "
                    f"(in a cls-token ViT the patch tokens after the last attention do not reach the score): "
                    f"use {working}"
                )
            scores = logits.detach().gather(1, classes[:, None])[:, 0].float()
        tokens, grads = tokens.float(), grads.float()

    # The hooks are off from here: a method that runs the model again (Score-CAM) sees it as it is.
    with torch.no_grad():
        if explainer.needs_forward:
            with eval_mode(model), cancellable(model, cancel):
                xd = x.to(run.device)
                scorers = [make_scorer(model, int(c), score_module if score_name else None) for c in classes]
                inputs = LayerInputs(tokens, grads, scores, xd, scorers, token_layout.grid, batch_size)
                token_cam = explainer.token_map(inputs)
        else:
            token_cam = explainer.token_map(LayerInputs(tokens, grads, scores))
        token_cam = token_cam.reshape(-1, *token_layout.grid.shape)
        _sync(run.device)
        run.timings["map"] = time.perf_counter() - start

        return run.result(token_cam, token_layout, (logits, own_logits, classes), target_name, method)
