"""MONAI bundle folders: the network, its weights and its input, read without running the bundle.

A bundle folder holds ``configs/inference.json`` (or ``.yaml``) with a
``network_def``, optionally ``configs/metadata.json``, and its weights in
``models/model.pt``. The network is built from ``network_def`` when it names a
MONAI network with literal arguments (``@id`` references are followed); a
definition that evaluates Python (``$...``) or imports other code runs only
with ``trust=True``, through MONAI's own config parser.

The input is taken as the bundle would predict: size and intensity
normalisation from the preprocessing transforms (Resize, ScaleIntensity,
NormalizeIntensity, ScaleIntensityRange and their dictionary forms; loaders
are ignored), else from ``metadata.json``'s ``network_data_format``, which
also gives the channels and class names.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from napari_vitcam.core.errors import CheckpointError, MissingExtraError, UntrustedCheckpointError
from napari_vitcam.core.vocabulary import Triple, one_line
from napari_vitcam.models.architectures.monai import (
    INSTALL,
    build_network,
    class_name_of,
    is_network_name,
    require_monai,
)
from napari_vitcam.models.architectures.registry import run_module_builder
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization
from napari_vitcam.models.spec_defaults import channels_from, spatial_size_from

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
WEIGHT_NAMES = ("model.safetensors", "model.pt", "model.pth")

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
_RESIZE_MODES = {
    "area": "area",
    "trilinear": "trilinear",
    "bilinear": "trilinear",
    "linear": "trilinear",
    "nearest": "nearest",
    "nearest-exact": "nearest",
}
_MAX_REFERENCE_DEPTH = 32


@dataclass(frozen=True)
class BundleFiles:
    root: Path
    config: Path
    metadata: Path | None
    weights: Path


@dataclass(frozen=True)
class BundleRecipe:
    """A bundle's network (built, weights not loaded yet), its spec, and the files read."""

    model: nn.Module
    spec: ModelSpec
    files: BundleFiles
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MetadataInput:
    channels: int | None = None
    spatial_size: Triple | None = None
    class_names: tuple[str, ...] = ()
    image_key: str = "image"


@dataclass(frozen=True)
class TransformInput:
    spatial_size: Triple | None = None
    normalization: Normalization | None = None
    resize_mode: str | None = None
    normalize_first: bool = True
    warnings: tuple[str, ...] = ()


# -- files ---------------------------------------------------------------------------------------


def is_bundle(folder: Path) -> bool:
    return any((folder / "configs" / name).is_file() for name in CONFIG_NAMES)


def find_bundle_files(folder: Path) -> BundleFiles:
    configs = [folder / "configs" / n for n in CONFIG_NAMES if (folder / "configs" / n).is_file()]
    if not configs:
        raise CheckpointError(
            f"folder {folder.name} is not a MONAI bundle (no configs/inference.json or .yaml): "
            "choose a checkpoint file or a bundle folder"
        )
    metadata = folder / "configs" / "metadata.json"
    weights = [folder / "models" / n for n in WEIGHT_NAMES if (folder / "models" / n).is_file()]
    if not weights:
        if (folder / "models" / "model.ts").is_file():
            raise CheckpointError(
                f"bundle {folder.name} has only TorchScript weights (models/model.ts), and Grad-CAM's hooks do not "
                "work on ScriptModules: add the eager weights as models/model.pt"
            )
        raise CheckpointError(
            f"bundle {folder.name} has no weights at models/model.pt: add them or choose another bundle"
        )
    return BundleFiles(folder, configs[0], metadata if metadata.is_file() else None, weights[0])


def read_config_file(path: Path) -> dict:
    """A JSON or YAML config as a dict; YAML needs pyyaml (the ``monai`` extra)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise CheckpointError(
                f"{path.name} is not valid JSON ({error.msg} at line {error.lineno}): fix the file"
            ) from None
    else:
        try:
            import yaml
        except ImportError:
            raise MissingExtraError(f"{path.name} is YAML, which needs pyyaml: {INSTALL}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            reason = one_line(error, 120)
            raise CheckpointError(f"{path.name} is not valid YAML ({reason}): fix the file") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name} holds a {type(data).__name__}, not a mapping of ids: fix the file")
    return data


# -- references ----------------------------------------------------------------------------------


def _lookup(config: dict, reference: str, source: str):
    node = config
    for part in re.split(r"::|#", reference):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise CheckpointError(
                f"{source} refers to '@{reference}', which the config does not define: fix the bundle's config"
            )
    return node


def resolve_references(value, config: dict, source: str, depth: int = 0):
    """``value`` with every ``"@id"`` string replaced by what the config holds there (``$`` expressions are kept)."""
    if depth > _MAX_REFERENCE_DEPTH:
        raise CheckpointError(f"{source} has references that loop: fix the bundle's config")
    if isinstance(value, str) and value.startswith("@"):
        return resolve_references(_lookup(config, value[1:], source), config, source, depth + 1)
    if isinstance(value, dict):
        return {k: resolve_references(v, config, source, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_references(v, config, source, depth + 1) for v in value]
    return value


def code_in(value) -> str | None:
    """The first string that MONAI would run as code (``$`` expression, ``%`` macro), or None."""
    if isinstance(value, str) and value[:1] in ("$", "%"):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for item in items:
        found = code_in(item)
        if found is not None:
            return found
    return None


# -- network -------------------------------------------------------------------------------------


def literal_network(definition, source: str) -> tuple[str, dict] | str:
    """``(ClassName, arguments)`` for a literal MONAI network definition, else why it needs code."""
    if not isinstance(definition, dict) or not isinstance(definition.get("_target_"), str):
        return f"network_def is not a {{'_target_': ...}} definition ({str(definition)[:60]!r})"
    target = definition["_target_"]
    arguments = {k: v for k, v in definition.items() if not k.startswith("_")}
    code = code_in(target) or code_in(arguments)
    if code is not None:
        return f"network_def evaluates Python ({code[:60]!r})"
    if not is_network_name(target):
        return f"network_def imports {target!r}, which is not a MONAI network"
    return class_name_of(target), arguments


@contextmanager
def _bundle_importable(root: Path) -> Iterator[None]:
    """The bundle's own modules (``scripts/``...) importable for the duration."""
    entry = str(root)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)


def _parse_trusted(files: BundleFiles) -> nn.Module:
    require_monai(f"bundle {files.root.name}")
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(files.config))
    if files.metadata is not None:
        parser.read_meta(str(files.metadata))
    parser["bundle_root"] = str(files.root)

    def build() -> object:
        with _bundle_importable(files.root):
            return parser.get_parsed_content("network_def")

    return run_module_builder(
        build,
        f"bundle {files.root.name}'s network_def",
        on_failure="check the bundle's config",
        on_wrong_type="fix the config",
    )


def build_bundle_network(config: dict, files: BundleFiles, trust: bool) -> tuple[nn.Module, str, dict]:
    """The network, its architecture (``monai:<Name>``, or ``""`` when built by running the config) and arguments."""
    source = f"bundle {files.root.name}"
    if "network_def" not in config:
        raise CheckpointError(f"{source} has no network_def in {files.config.name}: add one that builds the network")
    definition = resolve_references(config["network_def"], config, source)
    found = literal_network(definition, source)
    if isinstance(found, tuple):
        name, arguments = found
        return build_network(name, arguments), f"monai:{name}", arguments
    if not trust:
        raise UntrustedCheckpointError(
            f"{source}: {found}, and running a bundle's code can do anything: if you trust the bundle, "
            "load it with trust=True (the plugin asks first)"
        )
    return _parse_trusted(files), "", {}


# -- input ---------------------------------------------------------------------------------------


def _triple(value) -> Triple | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return (value, value, value)
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, int) and v > 0 for v in value):
        return tuple(value)  # type: ignore[return-value]
    return None


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
    inputs = data_format.get("inputs") if isinstance(data_format.get("inputs"), dict) else {}
    outputs = data_format.get("outputs") if isinstance(data_format.get("outputs"), dict) else {}
    key = "image" if "image" in inputs else next(iter(inputs), "image")
    image = inputs.get(key) if isinstance(inputs.get(key), dict) else {}
    first_output = next(iter(outputs.values()), {}) if outputs else {}
    channels = image.get("num_channels")
    return MetadataInput(
        channels=channels if isinstance(channels, int) and channels > 0 else None,
        spatial_size=_triple(image.get("spatial_shape")),
        class_names=_class_names(first_output.get("channel_def") if isinstance(first_output, dict) else None),
        image_key=key,
    )


def transform_name(target: str) -> str:
    """``"monai.transforms.Resized"`` -> ``"Resize"``: the array transform a name stands for."""
    name = target.rsplit(".", 1)[-1]
    if name.endswith("d") and name[:-1] in _LOADERS | _INTENSITY | _RESIZE:
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
    if name == "ScaleIntensity":
        low, high = args.get("minv", 0.0), args.get("maxv", 1.0)
        if low is None or high is None:
            return "ScaleIntensity with a factor"
        return Normalization("minmax", out_range=(low, high))
    if name == "NormalizeIntensity":
        if args.get("subtrahend") is not None or args.get("divisor") is not None:
            return "NormalizeIntensity with a fixed subtrahend or divisor"
        return Normalization("zscore", nonzero=bool(args.get("nonzero", False)))
    if not isinstance(args.get("a_min"), (int, float)) or not isinstance(args.get("a_max"), (int, float)):
        return "ScaleIntensityRange without numeric a_min and a_max"
    low, high = args.get("b_min"), args.get("b_max")
    out = (low, high) if low is not None and high is not None else (0.0, 1.0)
    window = (args["a_min"], args["a_max"])
    return Normalization("window", window=window, out_range=out, clip=bool(args.get("clip", False)))


def _resize(args: dict) -> tuple[Triple, str] | str:
    size = args.get("spatial_size")
    if args.get("size_mode", "all") != "all":
        return "Resize with size_mode='longest'"
    triple = _triple(size)
    if triple is None:
        return f"Resize to {size!r} (not 3 positive sizes)"
    mode = _RESIZE_MODES.get(str(args.get("mode", "area")))
    if mode is None:
        return f"Resize with mode {args.get('mode')!r}"
    return triple, mode


def input_from_transforms(transforms: list, image_key: str) -> TransformInput:
    """Size, normalisation and their order from a list of transform definitions."""
    size = mode = normalization = None
    norm_at = resize_at = None
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
            found = _resize(args)
            if isinstance(found, str):
                unsupported.append(found)
            else:
                (size, mode), resize_at = found, index
        else:
            skipped.append(name)
    warnings = []
    if skipped:
        warnings.append(
            f"preprocessing {', '.join(skipped)} is not applied when explaining (only resize and intensity "
            "transforms are): apply it to the volume first if it matters"
        )
    if unsupported:
        warnings.append(f"preprocessing not understood and not applied: {'; '.join(unsupported)}")
    first = norm_at is None or resize_at is None or norm_at < resize_at
    return TransformInput(size, normalization, mode, first, tuple(warnings))


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
    transforms, warnings = preprocessing_list(config, source)
    found = input_from_transforms(transforms, metadata.image_key) if transforms is not None else TransformInput()
    warnings += [f"{source}: {w}" for w in found.warnings]
    size = found.spatial_size or metadata.spatial_size or spatial_size_from(model, arguments)
    if size is None:
        size = InputSpec().spatial_size
        warnings.append(
            f"{source} says nothing about its input size (no Resize, no spatial_shape): using {size}; "
            "add spatial_shape to metadata.json"
        )
    spec = InputSpec(
        channels=metadata.channels or channels_from(model, arguments) or 1,
        spatial_size=size,
        normalization=found.normalization or Normalization(),
        resize_mode=found.resize_mode or "trilinear",
        normalize_first=found.normalize_first,
    )
    return spec, warnings


# -- all together --------------------------------------------------------------------------------


def read_bundle(folder: Path, *, trust: bool = False) -> BundleRecipe:
    """Build a bundle's network and spec; the caller loads ``files.weights`` into it."""
    files = find_bundle_files(folder)
    source = f"bundle {folder.name}"
    config = read_config_file(files.config)
    metadata = read_config_file(files.metadata) if files.metadata is not None else {}
    model, architecture, arguments = build_bundle_network(config, files, trust)
    meta = metadata_input(metadata)
    spec_input, warnings = bundle_input(config, meta, model, arguments, source)
    spec = ModelSpec(input=spec_input, class_names=meta.class_names, architecture=architecture, arguments=arguments)
    return BundleRecipe(model, spec, files, warnings)
