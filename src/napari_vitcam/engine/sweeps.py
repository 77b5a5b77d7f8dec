"""Sweeps: many maps from one forward pass, as a user explores.

* :func:`sweep_blocks`: one layer method at every candidate layer, for one
  class, from one forward pass and one backward pass (every target's
  activation is recorded in the same forward, and one ``autograd.grad`` call
  returns the score's gradient at all of them).
* :func:`sweep_classes`: one method for every class, from one forward pass
  (one backward pass per class through the graph it kept; perturbation
  methods, which have no graph, run per class).

Both return a :class:`Sweep`: the maps stacked along a new axis after the
batch, with a label for each slice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
from torch import nn

from napari_vitcam.core.errors import InputError, TargetLayerError
from napari_vitcam.core.vocabulary import Upsample, class_label
from napari_vitcam.engine.attention import capture_attention, check_attention
from napari_vitcam.engine.cam import (
    ClassIndex,
    _class_indices,
    _patch_grid,
    _sync,
    as_probabilities,
    explain_layer_map,
)
from napari_vitcam.engine.capture import capture_as_leaf, capture_outputs, eval_mode, model_lock, with_gradients
from napari_vitcam.engine.dispatch import (
    _explainer,
    _grid_or_error,
    _logits,
    _score_module,
    _scores,
    _watched,
    attention_prefix,
    explain_tokens,
    readout_from_gradient,
)
from napari_vitcam.engine.explainers.base import (
    AttentionExplainer,
    AttentionInputs,
    Explainer,
    LayerExplainer,
    PerturbationExplainer,
)
from napari_vitcam.engine.introspect import check_input, ends_in_sigmoid, model_device, resolve_module
from napari_vitcam.engine.token_grid import Layout, TokenGrid
from napari_vitcam.engine.voxel_map import tokens_to_voxels


@dataclass(frozen=True)
class Sweep:
    """Maps of one sweep. Tensors stay on the model's device.

    Args:
        cams: (B, K, D, H, W) the K raw voxel maps of each sample.
        token_cams: K token maps, each (B, d, h, w) on its own grid.
        grids: the K grids.
        labels: what each of the K slices is (a layer name, or a class name).
        logits: (B, classes) the scores explained (the score layer's output where one is named).
        output_logits: the model's own output where a score layer is named.
        class_idx: (B, K) the class each map explains.
        method: the explainer's registry name.
        timings: seconds per stage.
    """

    cams: torch.Tensor
    token_cams: list[torch.Tensor]
    grids: list[TokenGrid]
    labels: tuple[str, ...]
    logits: torch.Tensor
    class_idx: torch.Tensor
    method: str
    timings: dict[str, float] = field(default_factory=dict)
    output_logits: torch.Tensor | None = None
    sigmoid_output: bool = False

    @property
    def probabilities(self) -> torch.Tensor:
        """What the model outputs, as probabilities (its own output, not the scores explained).

        As :attr:`~napari_vitcam.engine.cam.CamResult.probabilities`: an output that already is a
        distribution (a softmax head) is returned as it is.
        """
        return as_probabilities(
            self.output_logits if self.output_logits is not None else self.logits, sigmoid_output=self.sigmoid_output
        )


def _default_targets(model: nn.Module, x: torch.Tensor, score_layer) -> list[str]:
    from napari_vitcam.engine.targets import list_targets

    names = [c.name for c in list_targets(model, x[:1], score_layer=score_layer) if not c.zero_gradient]
    if not names:
        raise TargetLayerError("the model offers no layer with a gradient to sweep: pass targets")
    return names


@with_gradients
def sweep_blocks(
    model: nn.Module,
    x: torch.Tensor,
    targets: Sequence[str] | None = None,
    method: str | Explainer = "gradcam",
    class_idx: ClassIndex = None,
    *,
    upsample: Upsample = "smooth",
    score_layer: str | nn.Module | None = None,
    layout: Layout = "auto",
    token_grid: tuple[int, int, int] | None = None,
    out_shape: tuple[int, int, int] | None = None,
) -> Sweep:
    """One layer method at each of ``targets``, for one class per sample, from one forward and one backward pass.

    Args:
        model: the classifier.
        x: (B, C, D, H, W).
        targets: dotted layer names; None: every candidate :func:`list_targets`
            finds with a gradient, in forward order.
        method: a layer explainer (its name or instance).
        class_idx: None (each sample's predicted class), an int, or one per sample.
        upsample, score_layer, layout, token_grid, out_shape: as for :func:`explain_tokens`.
    """
    x = check_input(x, model)
    explainer = _explainer(method)
    if not isinstance(explainer, LayerExplainer) or explainer.needs_forward:
        raise InputError(
            f"method {explainer.name!r} ({explainer.label}) does not read one layer from one backward pass: "
            "sweep blocks with a gradient method such as gradcam"
        )
    score_name, score_module = _score_module(model, score_layer)
    names = list(targets) if targets is not None else _default_targets(model, x, score_name)
    modules = {name: resolve_module(model, name)[1] for name in names}
    device = model_device(model)
    input_shape = tuple(int(s) for s in x.shape[2:])
    timings: dict[str, float] = {}
    with ExitStack() as stack:
        stack.enter_context(model_lock(model))  # one explanation at a time per model
        stack.enter_context(eval_mode(model))
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        outputs = stack.enter_context(capture_outputs(modules, copy=True))  # safe from in-place ops after
        seen = stack.enter_context(capture_outputs(_watched(model, score_module)))
        start = time.perf_counter()
        xd = x.detach().to(device).clone().requires_grad_(True)
        logits, own_logits = _scores(model(xd), seen, score_name)
        timings["forward"] = time.perf_counter() - start
    for name in names:
        if len(outputs[name]) != 1:
            raise TargetLayerError(
                f"target layer {name!r} ran {len(outputs[name])} times in the forward pass: choose layers that run once"
            )
    classes = _class_indices(class_idx, logits)
    start = time.perf_counter()
    activations = [outputs[name][0] for name in names]
    score = logits.gather(1, classes[:, None]).sum()
    grads = torch.autograd.grad(score, activations, allow_unused=True)
    _sync(device)
    timings["backward"] = time.perf_counter() - start
    start = time.perf_counter()
    embed_shape = tuple(seen["embed"][-1].shape[2:]) if seen.get("embed") else None
    grid = _patch_grid(model, input_shape, embed_shape, token_grid)
    token_cams, cams, grids = [], [], []
    for name, activation, gradient in zip(names, activations, grads, strict=True):
        gradient = torch.zeros_like(activation) if gradient is None else gradient
        token_cam, token_layout = explain_layer_map(
            model, x, explainer, modules[name], name, activation.detach(), gradient.detach(), logits, classes,
            grid, input_shape, layout,
        )  # fmt: skip
        token_cams.append(token_cam)
        grids.append(token_layout.grid)
        cams.append(tokens_to_voxels(token_cam, token_layout.grid, out_shape, mode=upsample))
    _sync(device)
    timings["map"] = time.perf_counter() - start
    return Sweep(
        cams=torch.stack(cams, dim=1),
        token_cams=token_cams,
        grids=grids,
        labels=tuple(names),
        logits=logits.detach(),
        class_idx=classes[:, None].expand(-1, len(names)).clone(),
        method=explainer.name,
        timings=timings,
        output_logits=own_logits,
        sigmoid_output=ends_in_sigmoid(model),
    )


@with_gradients
def sweep_classes(
    model: nn.Module,
    x: torch.Tensor,
    method: str | Explainer = "gradcam",
    target_layer: str | nn.Module | None = None,
    classes: Sequence[int] | None = None,
    *,
    class_names: Sequence[str] = (),
    upsample: Upsample = "smooth",
    score_layer: str | nn.Module | None = None,
    layout: Layout = "auto",
    token_grid: tuple[int, int, int] | None = None,
    out_shape: tuple[int, int, int] | None = None,
    batch_size: int = 16,
) -> Sweep:
    """One method for each of ``classes`` (default: every class), from one forward pass.

    Layer and attention methods keep the forward pass's graph and run one
    backward pass per class; perturbation methods run per class.

    Args:
        model: the classifier.
        x: (B, C, D, H, W).
        method: any registered explainer (name or instance).
        target_layer: the layer a layer method reads.
        classes: the class indices to explain; None: all.
        class_names: names for the labels (``"class k"`` where none is given).
        upsample, score_layer, layout, token_grid, out_shape, batch_size: as for :func:`explain_tokens`.
    """
    x = check_input(x, model)
    explainer = _explainer(method)
    device = model_device(model)
    score_name, score_module = _score_module(model, score_layer)
    input_shape = tuple(int(s) for s in x.shape[2:])
    timings: dict[str, float] = {}
    if isinstance(explainer, PerturbationExplainer) or (
        isinstance(explainer, LayerExplainer) and explainer.needs_forward
    ):
        if classes is None:
            with eval_mode(model), torch.no_grad(), capture_outputs(_watched(model, score_module)) as seen:
                count = _logits(model(x.to(device)), seen, score_name).shape[1]
        wanted = list(range(count)) if classes is None else list(classes)
        runs = []
        for c in wanted:
            run = explain_tokens(
                model, x, explainer, target_layer, c, upsample=upsample, score_layer=score_layer, layout=layout,
                token_grid=token_grid, out_shape=out_shape, batch_size=batch_size,
            )  # fmt: skip
            runs.append(run)
        return _stack_classes(runs[0].logits, [r.token_cam for r in runs], [r.cam for r in runs],
                              [r.grid for r in runs], wanted, class_names, explainer.name, timings,
                              runs[0].output_logits, runs[0].sigmoid_output)  # fmt: skip
    with ExitStack() as stack:
        stack.enter_context(model_lock(model))  # one explanation at a time per model
        stack.enter_context(eval_mode(model))
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        seen = stack.enter_context(capture_outputs(_watched(model, score_module)))
        if isinstance(explainer, AttentionExplainer):
            found = stack.enter_context(capture_attention(model, x.shape[0]))
        else:
            if target_layer is None:
                raise TargetLayerError(
                    f"method {explainer.name!r} ({explainer.label}) reads one layer: pass target_layer"
                )
            target_name, target = resolve_module(model, target_layer)
            leaf = stack.enter_context(capture_as_leaf(target, target_name))
        start = time.perf_counter()
        xd = x.detach().to(device).clone().requires_grad_(True)
        logits, own_logits = _scores(model(xd), seen, score_name)
        timings["forward"] = time.perf_counter() - start
    wanted = list(range(logits.shape[1])) if classes is None else list(classes)
    start = time.perf_counter()
    token_cams, cams, grids = [], [], []
    if isinstance(explainer, AttentionExplainer):
        tokens = check_attention(found)
        grid = _grid_or_error(model, input_shape, seen, token_grid)
        prefix = attention_prefix(tokens, grid)
        probs = [a.probs for a in found]
        for c in wanted:
            index = _class_indices(c, logits)
            score = logits.gather(1, index[:, None]).sum()
            grads = torch.autograd.grad(score, probs, retain_graph=True, allow_unused=True)
            grads = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(probs, grads, strict=True))
            inputs = AttentionInputs(
                [p.detach() for p in probs],
                [g.detach() for g in grads] if explainer.needs_gradients else None,
                prefix,
                readout_from_gradient(grads[-1]),
                grid,
            )
            with torch.no_grad():
                token_cam = explainer.token_map(inputs).reshape(-1, *grid.shape)
            token_cams.append(token_cam)
            grids.append(grid)
            cams.append(tokens_to_voxels(token_cam, grid, out_shape, mode=upsample))
    else:
        assert isinstance(explainer, LayerExplainer)
        if len(leaf.activations) != 1:
            raise TargetLayerError(f"target layer {target_name!r} must run once per forward pass")
        activation = leaf.activations[0]
        embed_shape = tuple(seen["embed"][-1].shape[2:]) if seen.get("embed") else None
        patch_grid = _patch_grid(model, input_shape, embed_shape, token_grid)
        for c in wanted:
            index = _class_indices(c, logits)
            gradient = torch.zeros_like(activation)
            if explainer.needs_gradients:
                score = logits.gather(1, index[:, None]).sum()
                (found_gradient,) = torch.autograd.grad(score, activation, retain_graph=True, allow_unused=True)
                gradient = gradient if found_gradient is None else found_gradient
            token_cam, token_layout = explain_layer_map(
                model, x, explainer, target, target_name, activation.detach(), gradient, logits, index,
                patch_grid, input_shape, layout,
            )  # fmt: skip
            layout = token_layout.layout  # type: ignore[assignment]  # established once
            token_cams.append(token_cam)
            grids.append(token_layout.grid)
            cams.append(tokens_to_voxels(token_cam, token_layout.grid, out_shape, mode=upsample))
    _sync(device)
    timings["backward+map"] = time.perf_counter() - start
    return _stack_classes(
        logits,
        token_cams,
        cams,
        grids,
        wanted,
        class_names,
        explainer.name,
        timings,
        own_logits,
        ends_in_sigmoid(model),
    )


def _stack_classes(
    logits, token_cams, cams, grids, wanted, class_names, method, timings, own_logits=None, sigmoid_output=False
) -> Sweep:
    names = tuple(class_names[c] if c < len(class_names) else class_label(c) for c in wanted)
    batch = logits.shape[0]
    return Sweep(
        cams=torch.stack(cams, dim=1),
        token_cams=token_cams,
        grids=grids,
        labels=names,
        logits=logits.detach(),
        class_idx=torch.tensor(wanted, device=logits.device)[None].expand(batch, -1).clone(),
        method=method,
        timings=timings,
        output_logits=own_logits,
        sigmoid_output=sigmoid_output,
    )
