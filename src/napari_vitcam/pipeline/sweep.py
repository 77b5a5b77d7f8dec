"""Sweeping a whole volume: every block, or every class, as one stack of heatmaps at the volume's shape.

The pipeline's side of :mod:`napari_vitcam.engine.sweeps`: the volume is
brought to the model as :func:`~napari_vitcam.pipeline.explain.explain_volume`
brings it (orientation, spacing, intensities, size), the engine computes every
slice from one forward pass, and each slice comes back on the volume's own
voxel grid, normalised to [0, 1] by its own maximum (the raw maxima are kept,
so slices can still be compared).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import torch

from napari_vitcam.core.errors import Cancelled, InputError, model_errors_as_input_errors
from napari_vitcam.core.vocabulary import class_labels, name_of_class
from napari_vitcam.engine.cam import Progress
from napari_vitcam.engine.capture import model_lock
from napari_vitcam.engine.explainers import LayerExplainer, get_explainer
from napari_vitcam.engine.sweeps import Sweep, sweep_blocks, sweep_classes
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.pipeline.checks import (
    NonFinite,
    check_finite_output,
)
from napari_vitcam.pipeline.explain import VolumeRun
from napari_vitcam.pipeline.frame import ModelFrame

SweepAxis = Literal["blocks", "classes"]
SWEEP_AXES: tuple[SweepAxis, ...] = get_args(SweepAxis)


@dataclass(frozen=True)
class VolumeSweep:
    """What :func:`sweep_volume` computed: K heatmaps of one volume, one per block or per class.

    Args:
        heatmaps: (K, *volume spatial shape) float32, each slice in [0, 1] by its own maximum.
        labels: what each slice is: a layer name (``over="blocks"``) or a class name (``over="classes"``).
        over: ``"blocks"`` or ``"classes"``.
        raw_max: each slice's maximum before normalisation, in the method's units (0: an empty map).
        class_idx: the class each slice explains.
        method: the explainer's name.
        target_layer: the layer a class sweep read (None for a block sweep or a method without a layer).
        probabilities: what the model outputs for the volume.
        class_names: the model's class names.
        device: where it ran.
        preprocessing: how the volume was brought to the model.
        timings: seconds per stage.
    """

    heatmaps: np.ndarray
    labels: tuple[str, ...]
    over: SweepAxis
    raw_max: tuple[float, ...]
    class_idx: tuple[int, ...]
    method: str
    target_layer: str | None
    probabilities: np.ndarray
    class_names: tuple[str, ...]
    device: str
    preprocessing: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def predicted_class(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def predicted_name(self) -> str:
        return name_of_class(self.class_names, self.predicted_class)


def sweep_volume(
    loaded: LoadedModel,
    volume: object,
    *,
    over: SweepAxis,
    method: str = "gradcam",
    class_idx: int | str | None = None,
    target_layer: str | None = None,
    targets: list[str] | None = None,
    upsample: str = "smooth",
    device: str | torch.device = "auto",
    affine: np.ndarray | None = None,
    frame: ModelFrame | None = None,
    nonfinite: NonFinite = "error",
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> VolumeSweep:
    """Every block (for one class) or every class (at one block), as a stack of heatmaps of ``volume``.

    Args:
        loaded: the model and its spec.
        volume: (D, H, W) or (C, D, H, W).
        over: ``"blocks"``: a layer method at every candidate layer with a
            gradient (or ``targets``), for ``class_idx``; ``"classes"``: any
            method for every class, at ``target_layer`` (default: the spec's)
            for a layer method.
        method: a registered explainer; a block sweep needs a layer method.
        class_idx: the class a block sweep explains (None: the predicted one).
        target_layer: the layer a class sweep reads.
        targets: the layers a block sweep visits (None: every candidate with a gradient).
        upsample, device, affine, frame, nonfinite, progress, cancel: as for
            :func:`~napari_vitcam.pipeline.explain.explain_volume`.
    """
    if over not in SWEEP_AXES:
        raise InputError(f"unknown sweep {over!r}: sweep over one of {', '.join(SWEEP_AXES)}")
    spec = loaded.spec
    explainer = get_explainer(method)
    if over == "blocks" and not isinstance(explainer, LayerExplainer):
        raise InputError(
            f"{explainer.label} reads no single layer, so it has no block to sweep: sweep over classes, "
            "or choose a layer method such as Grad-CAM"
        )
    target = target_layer or spec.target_layer
    if over == "classes" and isinstance(explainer, LayerExplainer) and not target:
        raise InputError("no target layer given and the checkpoint recommends none: pass target_layer")
    run = VolumeRun.check(loaded, volume, class_idx, upsample, nonfinite, device, progress, affine, frame)
    index, upsample, torch_device, report = run.class_idx, run.upsample, run.device, run.report
    plan, out_shape, timings = run.plan, run.out_shape, run.timings
    x = run.model_input(loaded)
    shape = out_shape if plan.placement is None else None
    report("forward")
    with model_lock(loaded.model), model_errors_as_input_errors(tuple(x.shape)):
        loaded.model.to(torch_device)
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled")
        sweep: Sweep
        if over == "blocks":
            sweep = sweep_blocks(
                loaded.model, x, targets, explainer, index, upsample=upsample, score_layer=spec.score_layer,
                out_shape=shape,
            )  # fmt: skip
        else:
            sweep = sweep_classes(
                loaded.model, x, explainer, target if isinstance(explainer, LayerExplainer) else None,
                class_names=spec.class_names, upsample=upsample, score_layer=spec.score_layer, out_shape=shape,
            )  # fmt: skip
    report("map")
    start = time.perf_counter()
    check_finite_output("score", sweep.logits)
    if sweep.output_logits is not None:
        check_finite_output("output", sweep.output_logits)
    slices, maxima = [], []
    for k in range(len(sweep.labels)):
        cam = (
            sweep.cams[0, k]
            if plan.placement is None
            else plan.map_back(sweep.token_cams[k][:1], sweep.grids[k], upsample)
        )
        check_finite_output("map", cam)
        top = float(cam.max())
        maxima.append(top)
        normalised = (cam / top if top > 0 else torch.zeros_like(cam)).float().cpu().numpy()
        slices.append(plan.back(normalised).astype(np.float32, copy=False))
    timings.update(sweep.timings)
    timings["upsample"] = time.perf_counter() - start
    probabilities = sweep.probabilities[0].cpu().numpy()
    return VolumeSweep(
        heatmaps=np.stack(slices),
        labels=sweep.labels,
        over=over,
        raw_max=tuple(maxima),
        class_idx=tuple(int(c) for c in sweep.class_idx[0].tolist()),
        method=explainer.name,
        target_layer=target if over == "classes" and isinstance(explainer, LayerExplainer) else None,
        probabilities=probabilities,
        class_names=spec.class_names or class_labels(len(probabilities)),
        device=str(torch_device),
        preprocessing={
            "normalization": spec.input.normalization.kind,
            "model_input_shape": list(spec.input.spatial_size),
            "volume_shape": [int(s) for s in getattr(volume, "shape", ())],
            **plan.report,
        },
        timings=timings,
    )
