"""Building a bundle's network: from a literal ``network_def`` without running anything, or, trusted, by MONAI.

A ``network_def`` that names a MONAI network with literal arguments (``@id``
references followed) is built directly. One that evaluates Python (``$...``),
uses a ``%`` macro or imports other code runs only with ``trust=True``,
through MONAI's own config parser with the bundle folder importable.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from napari_vitcam.core.errors import CheckpointError, UntrustedCheckpointError
from napari_vitcam.models.architectures.factory import run_module_builder
from napari_vitcam.models.architectures.monai import PREFIX, class_name_of, is_network_name, require_monai
from napari_vitcam.models.architectures.registry import build_model
from napari_vitcam.models.formats.monai_bundle.config import BundleFiles, code_in, resolve_references
from napari_vitcam.models.weights import TRUST_REMEDY


def literal_network(definition: object) -> tuple[str, dict] | str:
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
    """The network, its architecture (``monai:<Name>``, or ``""`` when built by running the config) and arguments.

    Args:
        config: the bundle's inference config.
        files: the bundle's files.
        trust: the caller allows running the bundle's code.
    """
    source = f"bundle {files.root.name}"
    if "network_def" not in config:
        raise CheckpointError(f"{source} has no network_def in {files.config.name}: add one that builds the network")
    definition = resolve_references(config["network_def"], config, source)
    found = literal_network(definition)
    if isinstance(found, tuple):
        name, arguments = found
        architecture = f"{PREFIX}{name}"
        return build_model(architecture, arguments), architecture, arguments
    if not trust:
        raise UntrustedCheckpointError(
            f"{source}: {found}, and running a bundle's code can do anything: "
            f"{TRUST_REMEDY.replace('its source', 'the bundle')}"
        )
    return _parse_trusted(files), "", {}
