"""A bundle's input as the bundle would predict: from its preprocessing transforms and its metadata.

Size, intensity normalisation and the model's frame come from the
preprocessing transforms (Resize, ResizeWithPadOrCrop, ScaleIntensity,
NormalizeIntensity, ScaleIntensityRange, Orientation, Spacing and their
dictionary forms; loaders are ignored), else from ``metadata.json``'s
``network_data_format``, which also gives the channels and class names, else
from the network's own arguments (``img_size``). A bundle that says nothing
about its input size is refused: a guessed size would give a wrong answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from napari_vitcam.core.errors import CheckpointError
from napari_vitcam.core.vocabulary import Triple
from napari_vitcam.models.formats.monai_bundle.config import code_in, resolve_references
from napari_vitcam.models.limits import MAX_SPACING_MM
from napari_vitcam.models.spec import FIX, InputSpec, Normalization, orientation_codes
from napari_vitcam.models.spec_defaults import channels_from, positive_triple, spatial_size_from

_LOADERS = {
    "LoadImage",
    "EnsureChannelFirst",
    "AsChannelFirst",
    "AddChannel",
    "EnsureType",
    "ToTensor",
    "CastToType",
    "ToDevice",
    "Identity",
    "ToNumpy",
    "CopyItems",
    "SaveImage",
}
_INTENSITY = {"ScaleIntensity", "NormalizeIntensity", "ScaleIntensityRange"}
_RESIZE = {"Resize"}
_PAD_OR_CROP = {"ResizeWithPadOrCrop"}
_ORIENTATION = {"Orientation"}
_SPACING = {"Spacing"}
_READ = _LOADERS | _INTENSITY | _RESIZE | _PAD_OR_CROP | _ORIENTATION | _SPACING
#: Spacing's interpolation modes and the spec's resize_mode for them.
_SPACING_MODES = {"bilinear": "trilinear", "trilinear": "trilinear", "nearest": "nearest"}
_RESIZE_MODES = {
    "area": "area",
    "trilinear": "trilinear",
    "bilinear": "trilinear",
    "linear": "trilinear",
    "nearest": "nearest",
    "nearest-exact": "nearest",
}


@dataclass(frozen=True)
class MetadataInput:
    """What ``metadata.json`` says about the input and the outputs."""

    channels: int | None = None
    spatial_size: Triple | None = None
    class_names: tuple[str, ...] = ()
    image_key: str = "image"


@dataclass(frozen=True)
class TransformInput:
    """What the preprocessing transforms say about the input."""

    spatial_size: Triple | None = None
    normalization: Normalization | None = None
    resize_mode: str | None = None
    normalize_first: bool = True
    warnings: tuple[str, ...] = ()
    orientation: str | None = None
    spacing: tuple[float, float, float] | None = None
    fit: str = "resize"


def _class_names(channel_def) -> tuple[str, ...]:
    if not isinstance(channel_def, dict) or not channel_def:
        return ()
    keys = {str(k) for k in channel_def}
    if keys != {str(i) for i in range(len(channel_def))}:
        return ()
    by_index = {int(k): str(v) for k, v in channel_def.items()}
    return tuple(by_index[i] for i in range(len(by_index)))


def metadata_input(metadata: dict) -> MetadataInput:
    """Channels, spatial shape and class names from ``network_data_format``, where given."""
    data_format = metadata.get("network_data_format")
    if not isinstance(data_format, dict):
        return MetadataInput()
    inputs: dict = data_format["inputs"] if isinstance(data_format.get("inputs"), dict) else {}
    outputs: dict = data_format["outputs"] if isinstance(data_format.get("outputs"), dict) else {}
    key = "image" if "image" in inputs else next(iter(inputs), "image")
    image: dict = inputs[key] if isinstance(inputs.get(key), dict) else {}
    first_output: object = next(iter(outputs.values()), {}) if outputs else {}
    channels = image.get("num_channels")
    return MetadataInput(
        channels=channels if isinstance(channels, int) and channels > 0 else None,
        spatial_size=positive_triple(image.get("spatial_shape")),
        class_names=_class_names(first_output.get("channel_def") if isinstance(first_output, dict) else None),
        image_key=key,
    )


def transform_name(target: str) -> str:
    """``"monai.transforms.Resized"`` -> ``"Resize"``: the array transform a name stands for."""
    name = target.rsplit(".", 1)[-1]
    if name.endswith("d") and name[:-1] in _READ:
        return name[:-1]
    return name


def _applies_to(transform: dict, image_key: str) -> bool:
    if "keys" not in transform:
        return True  # an array transform: it sees the image
    keys = transform["keys"]
    keys = [keys] if isinstance(keys, str) else list(keys) if isinstance(keys, (list, tuple)) else []
    return image_key in keys


def _normalization(name: str, args: dict) -> Normalization | str:
    """The normalisation a MONAI intensity transform applies, or why it cannot be written as one."""
    try:
        return _intensity(name, args)
    except CheckpointError as error:  # values a Normalization refuses (an empty or infinite range)
        return f"{name} ({str(error).removesuffix(': ' + FIX)})"


def _intensity(name: str, args: dict) -> Normalization | str:
    if name == "ScaleIntensity":
        low, high = args.get("minv", 0.0), args.get("maxv", 1.0)
        if low is None or high is None:
            return "ScaleIntensity with a factor"
        return Normalization("minmax", out_range=(low, high))
    if name == "NormalizeIntensity":
        if args.get("subtrahend") is not None or args.get("divisor") is not None:
            return "NormalizeIntensity with a fixed subtrahend or divisor"
        nonzero = args.get("nonzero", False)
        if not isinstance(nonzero, bool):
            return f"NormalizeIntensity with nonzero={nonzero!r} (not true or false)"
        return Normalization("zscore", nonzero=nonzero)
    if not isinstance(args.get("a_min"), (int, float)) or not isinstance(args.get("a_max"), (int, float)):
        return "ScaleIntensityRange without numeric a_min and a_max"
    low, high = args.get("b_min"), args.get("b_max")
    out = (low, high) if low is not None and high is not None else (0.0, 1.0)
    window = (args["a_min"], args["a_max"])
    clip = args.get("clip", False)
    if not isinstance(clip, bool):
        return f"ScaleIntensityRange with clip={clip!r} (not true or false)"
    return Normalization("window", window=window, out_range=out, clip=clip)


def _resize(args: dict) -> tuple[Triple, str] | str:
    size = args.get("spatial_size")
    if args.get("size_mode", "all") != "all":
        return "Resize with size_mode='longest'"
    triple = positive_triple(size)
    if triple is None:
        return f"Resize to {size!r} (not 3 positive sizes)"
    mode = _RESIZE_MODES.get(str(args.get("mode", "area")))
    if mode is None:
        return f"Resize with mode {args.get('mode')!r}"
    return triple, mode


def _for_key(value: object, transform: dict, image_key: str) -> object:
    """A per-key argument (a list, one per key of a dictionary transform) for the image key."""
    keys = transform.get("keys")
    if isinstance(value, (list, tuple)) and isinstance(keys, (list, tuple)) and len(value) == len(keys):
        return value[list(keys).index(image_key)]
    return value


def _orientation(args: dict) -> str:
    """The axis codes an Orientation transform reorients to, or why it cannot be read as one."""
    codes = args.get("axcodes")
    if codes is None and args.get("as_closest_canonical") is True:
        codes = "RAS"
    labels = args.get("labels")
    if labels not in (None, [["L", "R"], ["P", "A"], ["I", "S"]], (("L", "R"), ("P", "A"), ("I", "S"))):
        return f"Orientation with labels {labels!r}"
    return orientation_codes(codes) or f"Orientation to {codes!r} (not three axis codes)"


def _spacing(transform: dict, args: dict, image_key: str) -> tuple[tuple[float, float, float], str] | str:
    """The voxel size and interpolation of a Spacing transform, or why they cannot be read."""
    pixdim = args.get("pixdim")
    if isinstance(pixdim, (int, float)) and not isinstance(pixdim, bool):
        pixdim = [pixdim] * 3
    if (
        not isinstance(pixdim, (list, tuple))
        or len(pixdim) != 3
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= MAX_SPACING_MM for v in pixdim)
    ):
        return f"Spacing to {args.get('pixdim')!r} (not 3 voxel sizes above 0 mm)"
    for name, default in (("diagonal", False), ("scale_extent", False), ("align_corners", False)):
        value = _for_key(args.get(name, default), transform, image_key)
        if value != default:
            return f"Spacing with {name}={value!r}"
    padding = _for_key(args.get("padding_mode", "border"), transform, image_key)
    if padding != "border":
        return f"Spacing with padding_mode {padding!r}"
    mode = _SPACING_MODES.get(str(_for_key(args.get("mode", "bilinear"), transform, image_key)))
    if mode is None:
        return f"Spacing with mode {args.get('mode')!r}"
    return (float(pixdim[0]), float(pixdim[1]), float(pixdim[2])), mode


def _pad_or_crop(args: dict) -> Triple | str:
    size = positive_triple(args.get("spatial_size"))
    if size is None:
        return f"ResizeWithPadOrCrop to {args.get('spatial_size')!r} (not 3 positive sizes)"
    if args.get("method", "symmetric") != "symmetric" or args.get("mode", "constant") != "constant":
        return "ResizeWithPadOrCrop with a method other than symmetric or a padding other than constant"
    if args.get("constant_values", 0) not in (0, 0.0):
        return "ResizeWithPadOrCrop padding with a value other than 0"
    return size


def input_from_transforms(transforms: list, image_key: str) -> TransformInput:
    """Size, normalisation, frame and their order from a list of transform definitions."""
    size = mode = normalization = orientation = spacing = spacing_mode = None
    fit = "resize"
    norm_at = resize_at = spacing_at = None
    skipped: list[str] = []
    unsupported: list[str] = []
    for index, transform in enumerate(transforms):
        if not isinstance(transform, dict) or not isinstance(transform.get("_target_"), str):
            unsupported.append(str(transform)[:40])
            continue
        if not _applies_to(transform, image_key):
            continue
        name = transform_name(transform["_target_"])
        args = {k: v for k, v in transform.items() if not k.startswith("_")}
        if name in _LOADERS:
            continue
        if code_in(args) is not None:
            unsupported.append(f"{name} (its arguments are Python expressions)")
        elif name in _INTENSITY:
            found = _normalization(name, args)
            if isinstance(found, str):
                unsupported.append(found)
            else:
                if normalization is not None:
                    unsupported.append(f"{name} after another intensity transform (only the last is used)")
                normalization, norm_at = found, index
        elif name in _RESIZE:
            resized = _resize(args)
            if isinstance(resized, str):
                unsupported.append(resized)
            else:
                (size, mode), resize_at, fit = resized, index, "resize"
        elif name in _PAD_OR_CROP:
            padded = _pad_or_crop(args)
            if isinstance(padded, str):
                unsupported.append(padded)
            else:
                size, resize_at, fit = padded, index, "crop_or_pad"
        elif name in _ORIENTATION:
            codes = _orientation(args)
            if codes.startswith("Orientation"):
                unsupported.append(codes)
            else:
                orientation = codes
        elif name in _SPACING:
            found_spacing = _spacing(transform, args, image_key)
            if isinstance(found_spacing, str):
                unsupported.append(found_spacing)
            else:
                (spacing, spacing_mode), spacing_at = found_spacing, index
        else:
            skipped.append(name)
    warnings = []
    if skipped:
        warnings.append(
            f"preprocessing {', '.join(skipped)} is not applied when explaining (only orientation, spacing, "
            "resize, pad-or-crop and intensity transforms are): apply it to the volume first if it matters"
        )
    if unsupported:
        warnings.append(f"preprocessing not understood and not applied: {'; '.join(unsupported)}")
    geometry_at = resize_at if resize_at is not None else spacing_at
    first = norm_at is None or geometry_at is None or norm_at < geometry_at
    if fit == "crop_or_pad":
        mode = spacing_mode or "trilinear"  # the spacing's interpolation is the only one
    return TransformInput(size, normalization, mode, first, tuple(warnings), orientation, spacing, fit)


def preprocessing_list(config: dict, source: str) -> tuple[list | None, list[str]]:
    """The bundle's preprocessing transforms as a list, or None with why when it cannot be read."""
    if "preprocessing" not in config:
        return None, []
    value = resolve_references(config["preprocessing"], config, source)
    if isinstance(value, dict) and str(value.get("_target_", "")).rsplit(".", 1)[-1] == "Compose":
        value = value.get("transforms")
    if isinstance(value, list):
        return value, []
    return None, [f"{source}: its preprocessing is not a list of transforms ({str(value)[:60]!r}), so it is not used"]


def bundle_input(
    config: dict, metadata: MetadataInput, model: nn.Module, arguments: dict, source: str
) -> tuple[InputSpec, list[str]]:
    """The input spec of a bundle, and warnings about preprocessing that is not applied.

    Args:
        config: the inference config.
        metadata: what ``metadata.json`` says.
        model: the network (for its ``img_size`` and ``in_channels``).
        arguments: the network's constructor arguments.
        source: names the bundle in messages.
    """
    transforms, warnings = preprocessing_list(config, source)
    found = input_from_transforms(transforms, metadata.image_key) if transforms is not None else TransformInput()
    warnings += [f"{source}: {w}" for w in found.warnings]
    size = found.spatial_size or metadata.spatial_size or spatial_size_from(model, arguments)
    if size is None:
        raise CheckpointError(
            f"{source} says nothing about its input size (no Resize, no spatial_shape, no img_size): "
            "add network_data_format.inputs.image.spatial_shape to configs/metadata.json"
        )
    spec = InputSpec(
        channels=metadata.channels or channels_from(model, arguments) or 1,
        spatial_size=size,
        normalization=found.normalization or Normalization(),
        resize_mode=found.resize_mode or "trilinear",
        normalize_first=found.normalize_first,
        orientation=found.orientation,
        spacing=found.spacing,
        fit=found.fit,
    )
    return spec, warnings
