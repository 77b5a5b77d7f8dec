"""The MONAI bundle format: a folder with ``configs/inference.json`` (or ``.yaml``) and ``models/model.pt``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from napari_vitcam.models.architectures.factory import call_factory
from napari_vitcam.models.architectures.monai import is_version_drift
from napari_vitcam.models.formats.base import CheckpointFormat, CheckpointSource, LoadedParts, LoadRequest
from napari_vitcam.models.formats.monai_bundle.config import BundleFiles, find_bundle_files, is_bundle, read_config_file
from napari_vitcam.models.formats.monai_bundle.network import build_bundle_network
from napari_vitcam.models.formats.monai_bundle.transforms import bundle_input, metadata_input
from napari_vitcam.models.formats.state_dict import architecture_label
from napari_vitcam.models.spec import ModelSpec
from napari_vitcam.models.state_dicts import find_state_dict, load_state
from napari_vitcam.models.weights import read_weights, sha256_file


@dataclass(frozen=True)
class BundleRecipe:
    """A bundle's network (built, weights not loaded yet), its spec, and the files read."""

    model: nn.Module
    spec: ModelSpec
    files: BundleFiles
    warnings: list[str] = field(default_factory=list)


def read_bundle(folder: Path, *, trust: bool = False) -> BundleRecipe:
    """Build a bundle's network and spec; the caller loads ``files.weights`` into it.

    Args:
        folder: the bundle folder.
        trust: the caller allows running the bundle's code.
    """
    files = find_bundle_files(folder)
    source = f"bundle {folder.name}"
    config = read_config_file(files.config)
    metadata = read_config_file(files.metadata) if files.metadata is not None else {}
    model, architecture, arguments = build_bundle_network(config, files, trust)
    meta = metadata_input(metadata)
    spec_input, warnings = bundle_input(config, meta, model, arguments, source)
    spec = ModelSpec(input=spec_input, class_names=meta.class_names, architecture=architecture, arguments=arguments)
    return BundleRecipe(model, spec, files, warnings)


class MonaiBundle(CheckpointFormat):
    """A MONAI bundle folder: the network from its config (run only when trusted), the input from its transforms."""

    name = "monai-bundle"

    def claims(self, source: CheckpointSource) -> bool:
        return isinstance(source, Path) and is_bundle(source)

    def load(self, source: CheckpointSource, request: LoadRequest) -> LoadedParts:
        assert isinstance(source, Path)
        recipe = read_bundle(source, trust=request.trust)
        weights = read_weights(recipe.files.weights, trust=request.trust)
        metadata_files = (recipe.files.config, recipe.files.metadata)
        files = {str(p.resolve()): sha256_file(p) for p in metadata_files if p is not None}
        files[str(recipe.files.weights.resolve())] = weights.sha256
        if request.factory is None:
            model = recipe.model
        else:
            model = call_factory(request.factory, request.factory_kwargs or recipe.spec.arguments)
        where = f"bundle {source.name} ({recipe.files.weights.name})"
        state = find_state_dict(weights.content, where)
        what = architecture_label(recipe.spec, request.factory)
        notes = recipe.warnings + load_state(model, state, source=where, what=what, tolerated=is_version_drift)
        return LoadedParts(model, request.spec or recipe.spec, files, self.name, notes)
