"""Evaluating one explained volume: against a mask, against the model, against chance.

The shared core of the widget's Evaluate section and of ``napari-vitcam
evaluate``: each function takes what :func:`~napari_vitcam.pipeline.explain.explain_volume`
returned for a volume, rebuilds the exact model input with
:func:`~napari_vitcam.pipeline.explain.model_input` where the model is needed,
and calls :mod:`.localisation`, :mod:`.faithfulness` or :mod:`.randomization`.

* :func:`against_mask`: pointing game (strict and within half a patch), energy
  pointing and best-threshold IoU, per label.
* :func:`against_model`: deletion and insertion curves with a recorded baseline,
  beside other maps of the same volume (e.g. occlusion, :func:`explain_alike`).
* :func:`compare_baseline_curves`: the same for several baselines, and how far the AUCs move.
* :func:`against_chance`: the cascading model-parameter randomisation test
  (on a copy: the loaded model is never modified).

No Qt, no napari.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_vitcam.core.errors import Cancelled, InputError
from napari_vitcam.engine.capture import model_lock
from napari_vitcam.engine.dispatch import explain_tokens
from napari_vitcam.engine.token_grid import TokenGrid
from napari_vitcam.evaluation.faithfulness import (
    BASELINES,
    MODES,
    InputsDone,
    PerturbationCurves,
    deletion_and_insertion,
)
from napari_vitcam.evaluation.localisation import MaskScores, Spacing, label_scores
from napari_vitcam.evaluation.randomization import RandomizationResult, cascading_randomization
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.pipeline.checks import NonFinite
from napari_vitcam.pipeline.explain import VolumeExplanation, explain_volume, model_input


@dataclass(frozen=True)
class Faithfulness:
    """Deletion and insertion curves of one map with one baseline.

    Args:
        baseline: what replaced removed (or hidden) patches.
        deletion: the deletion curve (lower AUC: the map's patches matter more).
        insertion: the insertion curve (higher AUC: the map's patches suffice sooner).
    """

    baseline: str
    deletion: PerturbationCurves
    insertion: PerturbationCurves

    def curves(self) -> dict[str, PerturbationCurves]:
        return {"deletion": self.deletion, "insertion": self.insertion}

    def summary(self) -> dict[str, object]:
        """The AUCs and verdicts (no curves), JSON-ready."""
        out: dict[str, object] = {"baseline": self.baseline}
        for mode, curve in self.curves().items():
            out[f"{mode}_auc"] = curve.auc
            out[f"{mode}_random_auc"] = curve.random_auc
            out[f"{mode}_random_auc_std"] = float(curve.random_aucs.std())
            out[f"{mode}_beats_random"] = curve.beats_random
            for name, auc in curve.compared_aucs.items():
                out[f"{mode}_auc_{name}"] = auc
        return out

    def as_dict(self) -> dict[str, object]:
        return {"baseline": self.baseline, "deletion": self.deletion.as_dict(), "insertion": self.insertion.as_dict()}


def auc_spread(results: dict[str, Faithfulness]) -> dict[str, float]:
    """How far each mode's AUC moves between baselines: max minus min (0 for one baseline)."""
    spread: dict[str, float] = {}
    for mode in MODES:
        aucs = [getattr(r, mode).auc for r in results.values()]
        spread[mode] = float(max(aucs) - min(aucs)) if aucs else 0.0
    return spread


def _grid(explanation: VolumeExplanation) -> TokenGrid:
    if explanation.grid is None:
        raise InputError("this explanation has no token grid: explain the volume again with this version")
    return explanation.grid


def patch_tolerance(explanation: VolumeExplanation, spacing: Spacing = None) -> float:
    """Half a patch, in the heatmap's voxels (or in the spacing's units): the tolerant pointing game's tolerance.

    A patch covers ``cell`` model-input voxels along each axis. Resized to the
    model's size, that is ``cell * volume / model input`` of the volume's
    voxels; resampled to the model's spacing (a checkpoint that declares one,
    with a volume whose geometry is known), ``cell * model spacing`` mm. The
    tolerance is half the largest of these extents.

    Args:
        explanation: the explanation (its grid, heatmap shape and preprocessing report).
        spacing: the heatmap's voxel size along each axis (e.g. mm); None: voxels.
    """
    grid = _grid(explanation)
    shape = explanation.heatmap.shape
    report = explanation.preprocessing
    scale = np.ones(3) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if report.get("fit", "resize") == "resize":
        extent = [c * s / i * v for c, s, i, v in zip(grid.cell, shape, grid.input_shape, scale, strict=True)]
        return float(max(extent) / 2.0)
    model_mm, volume_mm = report.get("model_spacing_mm"), report.get("volume_spacing_mm")
    order = report.get("reorientation", {}).get("order", [0, 1, 2])
    extent = []
    for k in range(3):  # model axis k samples the volume's axis order[k]
        ratio = model_mm[k] / volume_mm[k] if model_mm and volume_mm else 1.0
        extent.append(grid.cell[k] * ratio * scale[order[k]])
    return float(max(extent) / 2.0)


def against_mask(
    explanation: VolumeExplanation, labels: object, *, spacing: Spacing = None, tolerance: float | None = None
) -> list[MaskScores]:
    """The localisation metrics of the explanation's heatmap against each label of ``labels``.

    Args:
        explanation: what explain_volume returned.
        labels: integer or boolean labels on the heatmap's voxel grid (0: background).
        spacing: the voxel size along each axis; distances and the tolerance are then in its units.
        tolerance: the tolerant pointing game's tolerance (default: half a patch, :func:`patch_tolerance`).
    """
    values = np.asarray(labels)
    if values.shape != explanation.heatmap.shape:
        raise InputError(
            f"the mask has shape {values.shape} but the heatmap {explanation.heatmap.shape}: "
            "give a mask on the volume's voxel grid"
        )
    if tolerance is None:
        tolerance = patch_tolerance(explanation, spacing)
    return label_scores(explanation.heatmap, values, tolerance, spacing=spacing)


def model_inputs(
    loaded: LoadedModel,
    volume: object,
    explanation: VolumeExplanation,
    *,
    reference: object | None = None,
    nonfinite: NonFinite = "error",
    affine: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model input the map explains, and a reference volume prepared the same way, on the explanation's device.

    ``affine``: the volume's voxel-to-RAS affine as given to explain_volume (the reference shares it).
    """
    x = model_input(loaded, volume, device=explanation.device, nonfinite=nonfinite, affine=affine)
    ref = None
    if reference is not None:
        shape, expected = tuple(getattr(reference, "shape", ())), tuple(getattr(volume, "shape", ()))
        if shape != expected:
            raise InputError(
                f"the reference volume has shape {shape} but the volume {expected}: "
                "give a reference scan on the same grid (e.g. a healthy scan, registered)"
            )
        ref = model_input(loaded, reference, device=explanation.device, nonfinite=nonfinite, affine=affine)
    return x, ref


def _check_baseline(baseline: str, reference: object | None) -> None:
    if baseline not in BASELINES:
        raise InputError(f"unknown baseline {baseline!r}: choose one of {', '.join(BASELINES)}")
    if baseline == "reference" and reference is None:
        raise InputError("the 'reference' baseline needs a reference volume (e.g. a healthy scan): choose one")


def against_model(
    loaded: LoadedModel,
    volume: object,
    explanation: VolumeExplanation,
    *,
    baseline: str = "blur",
    reference: object | None = None,
    steps: int = 16,
    random_orders: int = 3,
    seed: int = 0,
    batch_size: int = 8,
    nonfinite: NonFinite = "error",
    affine: np.ndarray | None = None,
    compared: Mapping[str, VolumeExplanation] | None = None,
    cancel: threading.Event | None = None,
    progress: InputsDone | None = None,
    band: Faithfulness | None = None,
) -> Faithfulness:
    """Deletion and insertion curves of the explanation's token map, against random orders.

    Args:
        loaded: the model explained (left as it was).
        volume: the volume explained, as given to explain_volume.
        explanation: what explain_volume returned for it.
        baseline: one of :data:`~napari_vitcam.evaluation.faithfulness.BASELINES`.
        reference: the reference volume (same shape as ``volume``) for ``baseline="reference"``.
        steps: points per curve, less one.
        random_orders: random orders in the band.
        seed: for the random orders and the noise baseline.
        batch_size: perturbed inputs per forward pass.
        nonfinite: as for explain_volume.
        affine: the volume's voxel-to-RAS affine, as given to explain_volume.
        compared: other explanations of the same volume and class (e.g. ``{"occlusion": ...}``, see
            :func:`explain_alike`), whose curves are drawn beside the map's, with the same baseline and band.
        cancel: set it to stop before the next batch of perturbed inputs.
        progress: called with (perturbed inputs run, inputs in all).
        band: the result of this function for another map of the same volume, model and class, with the same
            baseline and settings: its random band is reused instead of run again (the caller vouches that the
            volume and model are the same).
    """
    _check_baseline(baseline, reference)
    others = _check_compared(explanation, compared or {})
    return _curves(
        loaded,
        volume,
        explanation,
        [baseline],
        reference=reference,
        nonfinite=nonfinite,
        affine=affine,
        compared=others,
        progress=progress,
        steps=steps,
        random_orders=random_orders,
        seed=seed,
        batch_size=batch_size,
        cancel=cancel,
        band=None if band is None else band.deletion,
    )[baseline]


def _check_compared(explanation: VolumeExplanation, compared: Mapping[str, VolumeExplanation]) -> dict[str, np.ndarray]:
    """The compared explanations' token maps, refused in one line when they explain something else."""
    out = {}
    for name, other in compared.items():
        if other.class_idx != explanation.class_idx:
            raise InputError(
                f"the {name} map explains class {other.class_name!r} but this map {explanation.class_name!r}: "
                f"explain the same class with {name}"
            )
        if other.token_cam.shape != explanation.token_cam.shape:
            raise InputError(
                f"the {name} map lies on a {other.token_cam.shape} grid but this map on {explanation.token_cam.shape}: "
                "explain the same volume with the same model"
            )
        if not np.allclose(other.probabilities, explanation.probabilities, atol=1e-4):
            raise InputError(
                f"the {name} map's model gave other probabilities than this map's: "
                "it explains another volume or model; explain this volume again"
            )
        out[name] = other.token_cam
    return out


def explain_alike(
    loaded: LoadedModel,
    volume: object,
    explanation: VolumeExplanation,
    method: str,
    *,
    nonfinite: NonFinite = "error",
    affine: np.ndarray | None = None,
    cancel: threading.Event | None = None,
) -> VolumeExplanation:
    """The same volume and class explained with another ``method`` (its default target), e.g. occlusion to compare.

    Args:
        loaded: the model explained.
        volume: the volume explained, as given to explain_volume.
        explanation: what explain_volume returned for it (its class, device and upsampling are kept).
        method: a registered explainer.
        nonfinite: as for explain_volume.
        affine: the volume's voxel-to-RAS affine, as given to explain_volume.
        cancel: set it to stop the run.
    """
    return explain_volume(
        loaded,
        volume,
        class_idx=explanation.class_idx,
        method=method,
        upsample=explanation.upsample,
        device=explanation.device,
        token_grid=explanation.grid.shape if explanation.grid is not None else None,
        cancel=cancel,
        nonfinite=nonfinite,
        affine=affine,
    )


def compare_baseline_curves(
    loaded: LoadedModel,
    volume: object,
    explanation: VolumeExplanation,
    *,
    baselines: Sequence[str] = ("blur", "mean", "noise"),
    reference: object | None = None,
    steps: int = 16,
    random_orders: int = 3,
    seed: int = 0,
    batch_size: int = 8,
    nonfinite: NonFinite = "error",
    affine: np.ndarray | None = None,
    cancel: threading.Event | None = None,
    progress: InputsDone | None = None,
) -> dict[str, Faithfulness]:
    """:func:`against_model` once per baseline (``reference`` is added when a reference volume is given).

    ``progress`` hears the perturbed inputs run over all baselines.
    """
    names = list(baselines)
    if reference is not None and "reference" not in names:
        names.append("reference")
    for name in names:
        _check_baseline(name, reference)
    return _curves(
        loaded,
        volume,
        explanation,
        names,
        reference=reference,
        nonfinite=nonfinite,
        affine=affine,
        progress=progress,
        steps=steps,
        random_orders=random_orders,
        seed=seed,
        batch_size=batch_size,
        cancel=cancel,
    )


def _curves(
    loaded: LoadedModel,
    volume: object,
    explanation: VolumeExplanation,
    baselines: Sequence[str],
    *,
    reference: object | None,
    nonfinite: NonFinite,
    affine: np.ndarray | None,
    compared: Mapping[str, np.ndarray] | None = None,
    progress: InputsDone | None = None,
    **options: Any,
) -> dict[str, Faithfulness]:
    """:func:`~napari_vitcam.evaluation.faithfulness.deletion_and_insertion` for each baseline; ``progress`` hears
    the inputs run over all baselines."""
    grid = _grid(explanation)
    x, ref = model_inputs(loaded, volume, explanation, reference=reference, nonfinite=nonfinite, affine=affine)
    out = {}
    with model_lock(loaded.model):  # an explanation of the same model in another thread waits
        loaded.model.to(x.device)
        for index, name in enumerate(baselines):

            def heard(done: int, total: int, index: int = index) -> None:
                if progress is not None:
                    progress(index * total + done, len(baselines) * total)

            curves = deletion_and_insertion(
                loaded.model,
                x,
                explanation.token_cam,
                grid,
                explanation.class_idx,
                baseline=name,
                reference=ref,
                compared=compared,
                progress=heard,
                **options,
            )
            out[name] = Faithfulness(name, curves["deletion"], curves["insertion"])
    return out


def against_chance(
    loaded: LoadedModel,
    volume: object,
    explanation: VolumeExplanation,
    *,
    seed: int = 0,
    nonfinite: NonFinite = "error",
    cancel: threading.Event | None = None,
    affine: np.ndarray | None = None,
) -> RandomizationResult:
    """The cascading randomisation test of the explanation (Adebayo et al. 2018), on a copy of the model.

    The same method, block and class are explained on copies of the model
    randomised from the top down; the original map is the explanation's own.

    Args:
        loaded: the model explained (never modified).
        volume: the volume explained.
        explanation: what explain_volume returned for it.
        seed: for the re-initialisation.
        nonfinite: as for explain_volume.
        cancel: set it to stop before the next step.
        affine: the volume's voxel-to-RAS affine, as given to explain_volume.
    """
    x, _ = model_inputs(loaded, volume, explanation, nonfinite=nonfinite, affine=affine)

    def explain(model: nn.Module) -> torch.Tensor:
        if model is loaded.model:
            return torch.as_tensor(explanation.token_cam)
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled")
        result = explain_tokens(  # the same method, block and class, on the input the map explains
            model,
            x,
            explanation.method,
            explanation.target_layer or None,
            explanation.class_idx,
            score_layer=loaded.spec.score_layer,
            upsample="patch",
            token_grid=explanation.grid.shape if explanation.grid is not None else None,
            cancel=cancel,
        )
        return result.token_cam[0]

    with model_lock(loaded.model):  # the copy is taken while no run uses the model
        loaded.model.to(x.device)
        return cascading_randomization(loaded.model, explain, seed=seed)


def table_rows(
    masks: Sequence[MaskScores] = (),
    faithfulness: Faithfulness | None = None,
    baselines: dict[str, Faithfulness] | None = None,
    randomization: RandomizationResult | None = None,
) -> list[tuple[str, str, str, str]]:
    """Every number as ``(check, item, metric, value)`` rows, for a table a person copies."""
    rows: list[tuple[str, str, str, str]] = []
    for s in masks:
        for key, number in s.as_dict().items():
            if key != "label":
                rows.append(("mask", f"label {s.label}", key, f"{number:.6g}"))
    if faithfulness is not None:
        for key, entry in faithfulness.summary().items():
            if key != "baseline":
                rows.append(("model", f"baseline {faithfulness.baseline}", key, _text(entry)))
    for name, result in (baselines or {}).items():
        for mode in MODES:
            rows.append(("baselines", f"baseline {name}", f"{mode}_auc", _text(getattr(result, mode).auc)))
    if baselines:
        for which, moved in auc_spread(baselines).items():
            rows.append(("baselines", "all", f"{which}_auc_spread", _text(moved)))
    if randomization is not None:
        for step in randomization.steps:
            rows.append(("chance", step.randomized, "rank_correlation", _text(step.correlation)))
        rows.append(("chance", "final", "survives", _text(randomization.survives)))
    return rows


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
