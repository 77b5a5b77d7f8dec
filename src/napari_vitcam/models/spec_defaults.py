"""Filling the gaps of a :class:`~napari_vitcam.models.spec.ModelSpec` from the model itself.

Used when a file does not say: the input channels and size (from the
constructor arguments or the model's own attributes), the class names
("class 0", "class 1", ... for the classifier's outputs) and the score layer
(the Linear before a bounded head activation such as MONAI ViT's Tanh).
"""

from __future__ import annotations

from torch import nn

from napari_vitcam.core.vocabulary import Triple, class_labels
from napari_vitcam.models.spec import InputSpec, ModelSpec

_BOUNDED = (nn.Tanh, nn.Sigmoid, nn.Softmax)
_CHANNEL_ARGUMENTS = ("in_channels", "n_input_channels", "in_chans")
_SIZE_ARGUMENTS = ("img_size", "image_size", "input_size")


def positive_triple(value: object) -> Triple | None:
    """``8 -> (8, 8, 8)``, ``[8, 8, 4] -> (8, 8, 4)`` for positive ints, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return (value, value, value)
    if (
        isinstance(value, (tuple, list))
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return (int(value[0]), int(value[1]), int(value[2]))
    return None


def channels_from(model: nn.Module, arguments: dict) -> int | None:
    for key in _CHANNEL_ARGUMENTS:
        if isinstance(arguments.get(key), int):
            return arguments[key]
    in_shape = arguments.get("in_shape")
    if isinstance(in_shape, (tuple, list)) and len(in_shape) == 4:
        return int(in_shape[0])
    for module in model.modules():
        if isinstance(module, nn.Conv3d):
            return module.in_channels
    return None


def spatial_size_from(model: nn.Module, arguments: dict) -> Triple | None:
    for key in _SIZE_ARGUMENTS:
        size = positive_triple(arguments.get(key))
        if size is not None:
            return size
    in_shape = arguments.get("in_shape")
    if isinstance(in_shape, (tuple, list)) and len(in_shape) == 4:
        return positive_triple(list(in_shape[1:]))
    for module in model.modules():
        size = positive_triple(getattr(module, "img_size", None))
        if size is not None:
            return size
    return None


def input_from_model(model: nn.Module, arguments: dict) -> tuple[InputSpec, list[str]]:
    """An input spec read from the model, and a warning for each default it had to take."""
    warnings = []
    channels = channels_from(model, arguments)
    size = spatial_size_from(model, arguments)
    if size is None:
        size = InputSpec().spatial_size
        warnings.append(
            f"the model does not say what input size it takes: using {size}; set input.spatial_size in the spec"
        )
    return InputSpec(channels=channels or 1, spatial_size=size), warnings


def pre_activation_layer(model: nn.Module) -> str | None:
    """The Linear before a Tanh/Sigmoid/Softmax that ends the model's last child, e.g. ``classification_head.0``."""
    children = list(model.named_children())
    if not children:
        return None
    name, head = children[-1]
    if not isinstance(head, nn.Sequential) or len(head) < 2:
        return None
    if isinstance(head[-1], _BOUNDED) and isinstance(head[-2], nn.Linear):
        return f"{name}.{len(head) - 2}"
    return None


def class_count(model: nn.Module, score_layer: str | None) -> int | None:
    """Outputs of the score layer, else of the model's last Linear."""
    if score_layer is not None:
        module = dict(model.named_modules()).get(score_layer)
        if isinstance(module, nn.Linear):
            return module.out_features
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def complete_spec(model: nn.Module, spec: ModelSpec) -> ModelSpec:
    """``spec`` with its score layer and class names filled in where the model says."""
    score = spec.score_layer or pre_activation_layer(model)
    names = spec.class_names or class_labels(class_count(model, score) or 0)
    return spec.with_(score_layer=score, class_names=names)
