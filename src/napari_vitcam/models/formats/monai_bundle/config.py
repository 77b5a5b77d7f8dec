"""A bundle's files and config: finding them, reading JSON/YAML, following ``@`` references, spotting code.

Reading a config runs nothing. Following references is bounded: a chain of
references at most :data:`MAX_REFERENCE_DEPTH` deep, at most
:data:`MAX_RESOLVED_VALUES` values produced in all (a small config whose
references fan out would otherwise expand to billions), and nesting at most
:data:`MAX_NESTING` deep.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from napari_vitcam.core.errors import CheckpointError, MissingExtraError
from napari_vitcam.core.vocabulary import one_line
from napari_vitcam.models.architectures.monai import INSTALL

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
WEIGHT_NAMES = ("model.safetensors", "model.pt", "model.pth")
MAX_REFERENCE_DEPTH = 32
MAX_NESTING = 200
MAX_RESOLVED_VALUES = 100_000


@dataclass(frozen=True)
class BundleFiles:
    """The files of a bundle folder that loading reads."""

    root: Path
    config: Path
    metadata: Path | None
    weights: Path


def is_bundle(folder: Path) -> bool:
    """Whether ``folder`` has a ``configs/inference.json`` (or ``.yaml``)."""
    return any((folder / "configs" / name).is_file() for name in CONFIG_NAMES)


def find_bundle_files(folder: Path) -> BundleFiles:
    """The config, metadata and weights of a bundle folder; refuses a bundle without eager weights."""
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
        except RecursionError:
            raise CheckpointError(f"{path.name} is nested too deeply to read: fix the file") from None
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
        except RecursionError:
            raise CheckpointError(f"{path.name} is nested too deeply to read: fix the file") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name} holds a {type(data).__name__}, not a mapping of ids: fix the file")
    return data


def _lookup(config: dict, reference: str, source: str) -> object:
    node: object = config
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


class _Resolver:
    """Follows references with a budget on the values produced, shared by one resolution."""

    def __init__(self, config: dict, source: str):
        self.config = config
        self.source = source
        self.produced = 0

    def resolve(self, value: object, references: int, nesting: int) -> object:
        self.produced += 1
        if self.produced > MAX_RESOLVED_VALUES:
            raise CheckpointError(
                f"{self.source}: its config's @ references expand to more than {MAX_RESOLVED_VALUES:,} values "
                "(references that fan out): simplify the bundle's config"
            )
        if references > MAX_REFERENCE_DEPTH:
            raise CheckpointError(f"{self.source} has references that loop: fix the bundle's config")
        if nesting > MAX_NESTING:
            raise CheckpointError(
                f"{self.source}: its config is nested more than {MAX_NESTING} levels deep: fix the bundle's config"
            )
        if isinstance(value, str) and value.startswith("@"):
            return self.resolve(_lookup(self.config, value[1:], self.source), references + 1, nesting + 1)
        if isinstance(value, dict):
            return {k: self.resolve(v, references, nesting + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, references, nesting + 1) for v in value]
        return value


def resolve_references(value: object, config: dict, source: str) -> object:
    """``value`` with every ``"@id"`` string replaced by what the config holds there (``$`` expressions are kept).

    Args:
        value: a part of the config.
        config: the whole config, where references are looked up.
        source: names the bundle in messages.

    Raises:
        CheckpointError: a reference to nothing, references that loop, or that expand past the bounds.
    """
    return _Resolver(config, source).resolve(value, 0, 0)


def code_in(value: object) -> str | None:
    """The first string that MONAI would run as code (``$`` expression, ``%`` macro), or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and item[:1] in ("$", "%"):
            return item
        if isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return None
