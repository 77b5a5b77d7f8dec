"""Explaining a whole volume: a numpy array in, a heatmap of the same shape out."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch

from napari_vitcam.core.errors import DeviceOutOfMemoryError, InputError, is_out_of_memory, model_errors_as_input_errors
from napari_vitcam.core.vocabulary import Triple, Upsample, class_labels, name_of_class
from napari_vitcam.engine.cam import Progress
from napari_vitcam.engine.capture import model_lock
from napari_vitcam.engine.dispatch import explain_tokens
from napari_vitcam.engine.explainers import Explainer, LayerExplainer, get_explainer
from napari_vitcam.engine.token_grid import TokenGrid
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.models.targets import method_for
from napari_vitcam.pipeline.checks import (
    NonFinite,
    check_finite_output,
    check_nonfinite_choice,
    check_upsample,
    class_index,
)
from napari_vitcam.pipeline.devices import pick_device, release_device_memory
from napari_vitcam.pipeline.frame import FramePlan, ModelFrame, plan_frame, spec_frame
from napari_vitcam.pipeline.preprocess import as_array, prepare_input

AUTO = "auto"
"""The method name that asks for the model's default explainer."""


@dataclass(frozen=True)
class VolumeExplanation:
    """What :func:`explain_volume` computed for one volume.

    ``heatmap`` has the volume's spatial shape, float32, normalised to [0, 1]
    by ``raw_max`` (the raw Grad-CAM maximum in class-score units; 0 means the
    map is empty: no positive evidence for the class at that layer).
    ``probabilities`` are what the model outputs (softmax of its own output);
    the map explains the scores of ``score_layer`` (None: the model's output).
    ``token_cam`` is the raw map on ``grid``, the token grid over the model
    input that :func:`model_input` rebuilds (for evaluating the map against the model).
    """

    heatmap: np.ndarray
    raw_max: float
    predicted_class: int
    class_idx: int
    probabilities: np.ndarray
    class_names: tuple[str, ...]
    target_layer: str
    method: str
    upsample: str
    device: str
    token_cam: np.ndarray
    preprocessing: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    score_layer: str | None = None
    grid: TokenGrid | None = None

    @property
    def scores_explained(self) -> str:
        """Which scores the map explains, in words."""
        if self.score_layer is None:
            return "the model's output"
        return f"{self.score_layer} (before the model's output activation)"

    @property
    def class_name(self) -> str:
        return name_of_class(self.class_names, self.class_idx)

    @property
    def predicted_name(self) -> str:
        return name_of_class(self.class_names, self.predicted_class)

    @property
    def ranked_probabilities(self) -> list[tuple[str, float]]:
        """``(class name, probability)`` pairs, most probable first."""
        order = np.argsort(-self.probabilities, kind="stable")
        return [(name_of_class(self.class_names, int(i)), float(self.probabilities[i])) for i in order]


def spatial_shape(volume) -> Triple | None:
    """The last three axes (prepare_input reports volumes with too few)."""
    shape = tuple(int(s) for s in np.shape(volume))
    return (shape[-3], shape[-2], shape[-1]) if len(shape) >= 3 else None


@dataclass
class VolumeRun:
    """A volume run's checked settings (explain or sweep), from its start to the model's input.

    Args:
        class_idx: the class as an index (None: the predicted one).
        upsample: how token maps become voxel maps.
        nonfinite: what to do with NaN/Inf voxels.
        device: where the model runs.
        report: called with each stage's name.
        volume: the volume in the model's orientation (a view).
        plan: what brings it to the model and the map back.
        out_shape: the voxel shape of the maps on the model's side.
        timings: seconds per stage, filled as the run goes.
    """

    class_idx: int | None
    upsample: Upsample
    nonfinite: NonFinite
    device: torch.device
    report: Progress
    volume: object
    plan: FramePlan
    out_shape: Triple | None
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def check(
        cls,
        loaded: LoadedModel,
        volume: object,
        class_idx: int | str | None,
        upsample: str,
        nonfinite: NonFinite,
        device: str | torch.device,
        progress: Progress | None,
        affine: np.ndarray | None,
        frame: ModelFrame | None,
    ) -> VolumeRun:
        """Check the settings (one-line errors) and bring ``volume`` into the model's frame (as in :func:`explain_volume`)."""
        index = class_index(class_idx, loaded.spec.class_names)
        checked_upsample = check_upsample(upsample)
        checked_nonfinite = check_nonfinite_choice(nonfinite)
        torch_device = pick_device(device)
        report = progress or (lambda stage: None)
        oriented, plan = in_model_frame(volume, affine, frame, loaded)
        return cls(
            index, checked_upsample, checked_nonfinite, torch_device, report, oriented, plan, spatial_shape(oriented)
        )

    def model_input(self, loaded: LoadedModel) -> torch.Tensor:
        """The ``preprocess`` stage: the volume normalised and fitted to ``loaded``'s input, on the run's device."""
        self.report("preprocess")
        start = time.perf_counter()
        x = prepare_input(self.volume, loaded.spec.input, self.device, nonfinite=self.nonfinite, fit=self.plan.axes)
        self.timings["preprocess"] = time.perf_counter() - start
        return x


def explain_volume(
    loaded: LoadedModel,
    volume,
    *,
    target_layer: str | None = None,
    class_idx: int | str | None = None,
    method: str = "gradcam",
    upsample: str = "smooth",
    device: str | torch.device = "auto",
    token_grid: tuple[int, int, int] | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    nonfinite: NonFinite = "error",
    affine: np.ndarray | None = None,
    frame: ModelFrame | None = None,
) -> VolumeExplanation:
    """Explain ``volume`` ((D, H, W), or (C, D, H, W) for a C-channel model).

    The volume is normalised and resized as ``loaded.spec`` says; the heatmap
    comes back at the volume's own shape, aligned voxel for voxel whatever the
    resize factors. ``class_idx``: None (the predicted class), an index or a
    class name. ``device``: "auto" (cuda, then mps, then cpu) or a device name;
    the model is moved there and stays there. Out of GPU memory raises
    :class:`~napari_vitcam.core.errors.DeviceOutOfMemoryError` after releasing the
    memory the run held (the model goes back to the CPU); retry with
    ``device="cpu"``. ``frame``: the orientation and spacing the model was
    trained on (:mod:`napari_vitcam.pipeline.frame`; default: what the spec
    declares); with the volume's voxel-to-RAS ``affine`` the volume is
    reoriented into it (exactly: axes permuted and flipped), resampled and
    fitted to the model's size (one interpolation), and the heatmap comes back
    on the volume's own grid (one interpolation). Without ``affine`` a declared
    frame is noted in ``preprocessing["frame_note"]``.

    Arguments are checked before the model runs. A volume with NaN or ±Inf
    voxels (or float64 values beyond float32's range) is refused, saying how
    many and where, unless ``nonfinite="replace"`` (NaN by 0, ±Inf by the
    volume's finite extremes). A model whose output or map is not finite is
    an error, never a NaN result. Threads explaining one model take turns.
    ``method``: any registered explainer (``EXPLAINERS``), or ``"auto"``: the
    one :func:`~napari_vitcam.models.targets.method_for` chooses for this model
    by what it is (see ``docs/evaluation.md``), as the widget does by default
    (the command line's ``--method auto``);
    attention and perturbation methods need no target layer. ``token_grid``:
    the model's token grid (d, h, w), when the model does not say it.
    """
    spec = loaded.spec
    if method != AUTO:
        explainer = get_explainer(method)
        target = _target_for(explainer, target_layer, spec.target_layer)
    run = VolumeRun.check(loaded, volume, class_idx, upsample, nonfinite, device, progress, affine, frame)
    index, upsample, torch_device, report = run.class_idx, run.upsample, run.device, run.report
    volume, plan, out_shape, timings = run.volume, run.plan, run.out_shape, run.timings
    try:
        x = run.model_input(loaded)
        if method == AUTO:  # chosen once the volume is known to be usable: choosing runs the model
            choice = method_for(loaded)
            method = choice.method
            explainer = get_explainer(method)
            target = _target_for(explainer, target_layer or choice.target_layer, spec.target_layer)
        with model_lock(loaded.model):  # another thread's run on this model ends first
            loaded.model.to(torch_device)
            with model_errors_as_input_errors(tuple(x.shape)):
                result = explain_tokens(
                    loaded.model,
                    x,
                    explainer,
                    target if isinstance(explainer, LayerExplainer) else None,
                    index,
                    upsample=upsample,
                    score_layer=spec.score_layer,
                    token_grid=token_grid,
                    out_shape=cast(Triple, out_shape) if plan.placement is None else None,
                    progress=report,
                    cancel=cancel,
                )
        del x
        scores = result.output_logits if result.output_logits is not None else result.logits
        check_finite_output("output", scores)
        check_finite_output("score", result.logits)
        start = time.perf_counter()
        cam = result.cam[0] if plan.placement is None else plan.map_back(result.token_cam[:1], result.grid, upsample)
        check_finite_output("map", cam)
        raw_max = float(cam.max())
        heatmap = (cam.div_(raw_max) if raw_max > 0 else cam.zero_()).cpu().numpy()
        timings.update(result.timings)
        timings["upsample"] = timings.get("upsample", 0.0) + time.perf_counter() - start
        probabilities = result.probabilities[0].float().cpu().numpy()
        token_cam = result.token_cam[0].cpu().numpy()
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        with model_lock(loaded.model):
            loaded.model.to("cpu")
        release_device_memory(torch_device)
        advice = (
            "rerun on the CPU (device='cpu')" if torch_device.type != "cpu" else "free memory or use a smaller volume"
        )
        raise DeviceOutOfMemoryError(
            f"out of memory on {torch_device} explaining a volume of shape {tuple(np.shape(volume))}: {advice}",
            str(torch_device),
        ) from None
    return VolumeExplanation(
        heatmap=plan.back(heatmap).astype(np.float32, copy=False),
        raw_max=raw_max,
        predicted_class=int(np.argmax(probabilities)),
        class_idx=int(result.class_idx[0]),
        probabilities=probabilities,
        class_names=spec.class_names or class_labels(len(probabilities)),
        target_layer=result.target_layer,
        method=method,
        upsample=upsample,
        device=str(torch_device),
        token_cam=token_cam,
        preprocessing={
            "normalization": spec.input.normalization.kind,
            "window": spec.input.normalization.window,
            "model_input_shape": list(spec.input.spatial_size),
            "resize_mode": spec.input.resize_mode,
            "normalize_first": spec.input.normalize_first,
            "volume_shape": list(np.shape(volume)),
            **plan.report,
        },
        timings=timings,
        score_layer=result.score_layer,
        grid=result.grid,
    )


def _target_for(explainer: Explainer, given: str | None, from_spec: str | None) -> str | None:
    """The layer a layer method reads (the given one, else the checkpoint's); a one-line error when there is none."""
    target = given or from_spec
    if isinstance(explainer, LayerExplainer) and not target:
        raise InputError("no target layer given and the checkpoint recommends none: pass target_layer")
    return target


def in_model_frame(
    volume: object, affine: np.ndarray | None, frame: ModelFrame | None, loaded: LoadedModel
) -> tuple[object, FramePlan]:
    """The volume in the model's orientation (a view) and the plan that brings it to the model and back."""
    if isinstance(volume, torch.Tensor):
        volume = as_array(volume)  # a tensor may require grad or live on a GPU
    frame = frame if frame is not None else spec_frame(loaded.spec.input)
    plan = plan_frame(frame, affine, spatial_shape(volume), loaded.spec.input)
    return plan.orient(volume), plan


def model_input(
    loaded: LoadedModel,
    volume: object,
    *,
    device: str | torch.device = "auto",
    affine: np.ndarray | None = None,
    frame: ModelFrame | None = None,
    nonfinite: NonFinite = "error",
) -> torch.Tensor:
    """The (1, C, *spatial_size) input the model sees for ``volume``, as :func:`explain_volume` builds it.

    Args:
        loaded: the model and its spec.
        volume: (D, H, W) or (C, D, H, W).
        device: where the input goes ("auto": the device explain_volume would pick).
        affine: the volume's voxel-to-RAS affine (None: unknown).
        frame: the model's orientation and spacing (default: what the spec declares).
        nonfinite: what to do with NaN/Inf voxels ("error" or "replace").
    """
    oriented, plan = in_model_frame(volume, affine, frame, loaded)
    return prepare_input(
        oriented, loaded.spec.input, pick_device(device), nonfinite=check_nonfinite_choice(nonfinite), fit=plan.axes
    )
