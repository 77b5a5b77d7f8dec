"""Tiny real models for tests and benchmarks: each answers from something we know.

They are ordinary ``nn.Module``s (no mocks): the engine, the evaluation code
and the GUI run on them exactly as on a user's model.
"""

from __future__ import annotations

import torch
from torch import nn

from napari_vitcam.core.vocabulary import Triple
from napari_vitcam.models.architectures.vit3d import ViT3D, ViTConfig


class OneRegionClassifier(nn.Module):
    """Decides from one patch only: class 1 when the patch at ``token`` is bright, class 0 when dark.

    A patch embedding (``embed``, kernel = stride = ``patch``) averages each
    patch into ``width`` equal channels; the head reads the channels of the
    token at ``token`` and nothing else: ``logit_1 - logit_0 = 2 * width * mean``
    of that patch. Every explanation of class 1 should point at that patch.

    Args:
        size: the cubic input's edge, in voxels.
        patch: the patch edge.
        token: the grid cell the head reads.
        width: channels of the embedding.
    """

    def __init__(self, size: int = 16, patch: int = 4, token: Triple = (1, 2, 3), width: int = 4):
        super().__init__()
        self.token = token
        self.patch_size = (patch, patch, patch)
        self.img_size = (size, size, size)
        self.embed = nn.Conv3d(1, width, patch, patch)
        self.head = nn.Linear(width, 2)
        with torch.no_grad():
            self.embed.weight.fill_(1.0 / patch**3)
            assert self.embed.bias is not None
            self.embed.bias.zero_()
            self.head.weight.copy_(torch.stack([-torch.ones(width), torch.ones(width)]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cells = self.embed(x)
        i, j, k = self.token
        return self.head(cells[:, :, i, j, k])

    def region(self) -> torch.Tensor:
        """The voxels the head reads, as a boolean (D, H, W) mask."""
        mask = torch.zeros(self.img_size, dtype=torch.bool)
        p = self.patch_size[0]
        i, j, k = self.token
        mask[i * p : (i + 1) * p, j * p : (j + 1) * p, k * p : (k + 1) * p] = True
        return mask

    def bright_input(self, seed: int = 0, level: float = 3.0) -> torch.Tensor:
        """A (1, 1, D, H, W) noise input whose read patch is bright: the model answers class 1."""
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn((1, 1, *self.img_size), generator=generator) * 0.1
        x[0, 0][self.region()] += level
        return x


def tiny_vit(
    *,
    size: int | Triple = 16,
    patch: int | Triple = 8,
    width: int = 16,
    depth: int = 2,
    heads: int = 2,
    classes: int = 2,
    pool: str = "cls",
    channels: int = 1,
    seed: int = 0,
) -> ViT3D:
    """A small, seeded reference ViT in eval mode."""
    torch.manual_seed(seed)
    size3 = (size, size, size) if isinstance(size, int) else size
    patch3 = (patch, patch, patch) if isinstance(patch, int) else patch
    config = ViTConfig(
        in_channels=channels,
        img_size=size3,
        patch_size=patch3,
        width=width,
        depth=depth,
        heads=heads,
        num_classes=classes,
        pool=pool,
    )
    return ViT3D(config).eval()


class BoxOnly(nn.Module):
    """Any model, shown one box of its input only: ``backbone(x * mask)``, the mask 1 inside ``box``.

    The output depends on the voxels of ``box`` and on nothing else, so a
    perturbation outside it changes no score: wrapped around a third-party
    backbone, a model whose right answer is known.

    Args:
        backbone: the model that sees the masked input.
        size: the input's spatial shape (D, H, W).
        box: ``((d0, d1), (h0, h1), (w0, w1))``, the voxels it sees.
    """

    mask: torch.Tensor

    def __init__(self, backbone: nn.Module, size: Triple, box: tuple[tuple[int, int], ...]):
        super().__init__()
        self.backbone = backbone
        mask = torch.zeros(size)
        mask[tuple(slice(start, stop) for start, stop in box)] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> object:
        return self.backbone(x * self.mask)
