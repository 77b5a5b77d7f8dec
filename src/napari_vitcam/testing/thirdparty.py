"""Small third-party 3D transformers, built as their users build them, for tests and benchmarks.

vit-pytorch's package ``__init__`` imports modules that need torchvision,
while its 3D models need only torch and einops; where torchvision is missing
the model's own module is loaded from the installed package's file, unchanged.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

from torch import nn


def vit_pytorch_module(name: str) -> ModuleType:
    """``vit_pytorch.<name>`` (e.g. ``"vit_3d"``), also where the package's ``__init__`` cannot be imported."""
    full = f"vit_pytorch.{name}"
    try:
        return importlib.import_module(full)
    except ImportError:
        pass
    package = importlib.util.find_spec("vit_pytorch")
    if package is None or not package.submodule_search_locations:
        raise ImportError("vit-pytorch is not installed: pip install vit-pytorch")
    path = f"{next(iter(package.submodule_search_locations))}/{name}.py"
    spec = importlib.util.spec_from_file_location(f"_vitcam_{full}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {full} from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _small_vit_pytorch(
    module_name: str, class_name: str, size: int, patch: int, frame_patch: int, depth: int, **extra: object
) -> nn.Module:
    """A small vit-pytorch 3D model (two classes, width 32, two heads) on one-channel cubes of ``size`` voxels."""
    model_class = getattr(vit_pytorch_module(module_name), class_name)
    return model_class(
        image_size=size,
        image_patch_size=patch,
        frames=size,
        frame_patch_size=frame_patch,
        num_classes=2,
        dim=32,
        depth=depth,
        heads=2,
        mlp_dim=64,
        channels=1,
        dim_head=16,
        **extra,
    )


def vit_pytorch_vit(
    size: int = 16, patch: int = 4, frame_patch: int = 4, depth: int = 2, pool: str = "cls"
) -> nn.Module:
    """A small ``vit_pytorch.vit_3d.ViT`` on one-channel cubes of ``size`` voxels."""
    return _small_vit_pytorch("vit_3d", "ViT", size, patch, frame_patch, depth, pool=pool)


def vit_pytorch_simple_vit(size: int = 16, patch: int = 4, frame_patch: int = 4, depth: int = 2) -> nn.Module:
    """A small ``vit_pytorch.simple_vit_3d.SimpleViT`` (mean-pooled, no cls token) on one-channel cubes."""
    return _small_vit_pytorch("simple_vit_3d", "SimpleViT", size, patch, frame_patch, depth)


def monai_vit(size: int = 16, patch: int = 4, depth: int = 2, flash: bool = False) -> nn.Module:
    """A small stock MONAI ``ViT`` classifier (cls token, Tanh head) on one-channel cubes.

    ``flash``: its attention blocks use torch's ``scaled_dot_product_attention``
    (MONAI's ``use_flash_attention`` path, which the ViT constructor does not expose).
    """
    from monai.networks.nets import ViT

    model = ViT(
        in_channels=1,
        img_size=(size, size, size),
        patch_size=(patch, patch, patch),
        hidden_size=32,
        mlp_dim=64,
        num_layers=depth,
        num_heads=2,
        classification=True,
        num_classes=2,
        spatial_dims=3,
    )
    for module in model.modules():
        if hasattr(module, "use_flash_attention"):
            module.use_flash_attention = flash  # type: ignore[assignment]
    return model


class _StemViT(nn.Module):
    def __init__(self, vit: nn.Module):
        super().__init__()
        self.stem = nn.Conv3d(1, 8, kernel_size=2, stride=2)
        self.vit = vit

    def forward(self, x):
        return self.vit(self.stem(x).relu())


def monai_vit_after_stem(size: int = 32) -> nn.Module:
    """A convolution stem (kernel = stride = 2, 8 channels) before a stock MONAI ``ViT`` with 4^3 patches.

    Its tokens cover 8^3 input voxels, but the first patch-like convolution
    (the stem) makes a grid of 2^3 cells: the model says its token grid only
    when asked (``token_grid``).
    """
    from monai.networks.nets import ViT

    vit = ViT(
        in_channels=8,
        img_size=size // 2,
        patch_size=4,
        hidden_size=32,
        mlp_dim=64,
        num_layers=2,
        num_heads=2,
        classification=True,
        num_classes=2,
        spatial_dims=3,
        post_activation="",
    )
    return _StemViT(vit)
