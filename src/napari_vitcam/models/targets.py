"""Target discovery for a loaded model: the engine's probe on an input its spec describes."""

from __future__ import annotations

import torch
from torch import nn

from napari_vitcam.core.errors import TargetLayerError, model_errors_as_input_errors
from napari_vitcam.engine.attention import capture_attention, check_attention
from napari_vitcam.engine.explainers import LayerExplainer, get_explainer
from napari_vitcam.engine.introspect import model_device
from napari_vitcam.engine.recommend import MethodChoice, recommend_method
from napari_vitcam.engine.targets import TargetCandidate, list_targets, patch_grid
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.models.spec import InputSpec

_EXAMPLE_SEED = 0


def example_input(spec: InputSpec, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A reproducible standard-normal input of the spec's shape, batch 1."""
    generator = torch.Generator().manual_seed(_EXAMPLE_SEED)
    shape = (1, spec.channels, *spec.spatial_size)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


def _floating_dtype(model: nn.Module) -> torch.dtype:
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


def targets_for(loaded: LoadedModel) -> list[TargetCandidate]:
    """:func:`list_targets` for a loaded model, probed on an example input built from its spec.

    The same probe (one forward and one backward pass) tells whether the
    model's attention can be read, and so chooses its default explainer,
    kept on ``loaded.method`` (:func:`method_for`).
    """
    model = loaded.model
    example = example_input(loaded.spec.input, model_device(model), _floating_dtype(model))
    with model_errors_as_input_errors(tuple(example.shape)), capture_attention(model, example.shape[0]) as found:
        candidates = list_targets(model, example, score_layer=loaded.spec.score_layer)
    try:
        tokens = check_attention(found) if found else 0
    except TargetLayerError:
        tokens = 0
    grid = patch_grid(model, tuple(int(n) for n in example.shape[2:]))
    prefix = tokens - grid.n_tokens if tokens and grid is not None else 0
    choice = recommend_method(candidates, tokens > 0, max(prefix, 0))
    declared = loaded.spec.method
    if declared is not None:  # the checkpoint names the method it was validated with
        layer = loaded.spec.target_layer if isinstance(get_explainer(declared), LayerExplainer) else None
        choice = MethodChoice(declared, layer, "the checkpoint names the method it was validated with")
    elif choice.method == "gradcam" and loaded.spec.target_layer and choice.target_layer is None:
        choice = MethodChoice(choice.method, loaded.spec.target_layer, choice.reason)
    loaded.method = choice
    return candidates


def method_for(loaded: LoadedModel) -> MethodChoice:
    """The default explainer for a loaded model: chosen by the target probe, which runs once per model."""
    if loaded.method is None:
        targets_for(loaded)
    assert loaded.method is not None
    return loaded.method
