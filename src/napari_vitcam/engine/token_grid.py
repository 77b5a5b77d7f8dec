"""Where a target layer's activations sit in the input volume.

A :class:`TokenGrid` says how many tokens (or feature-map cells) there are
along each axis and how many input voxels each one covers. It comes from the
model itself: the output of its patch-embedding convolution, or its declared
patch size, or (for CNN feature maps) the map's own shape. A cube root of the
token count is never guessed.

:func:`as_tokens` turns the three supported layouts into one, (B, N, E):

* ViT tokens ``(B, T, E)`` with ``T = prefix + d*h*w`` (prefix: cls,
  distillation or register tokens, at the front);
* channel-first maps ``(B, E, d, h, w)`` (CNNs);
* channel-last maps ``(B, d, h, w, E)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from napari_vitcam.core.errors import LayoutError
from napari_vitcam.core.vocabulary import Triple

Layout = Literal["auto", "tokens", "channels_first", "channels_last"]
LAYOUTS = ("auto", "tokens", "channels_first", "channels_last")


@dataclass(frozen=True)
class TokenGrid:
    """A grid of ``shape`` tokens over a model input of ``input_shape`` voxels.

    Token ``(i, j, k)`` covers input voxels ``[i*cell[0], (i+1)*cell[0])`` and
    so on. With a ViT, ``cell`` is the patch size and the voxels beyond
    ``shape * cell`` (when the input is not a multiple of the patch) are never
    seen by the model.
    """

    shape: Triple
    cell: tuple[float, float, float]
    input_shape: Triple

    @property
    def n_tokens(self) -> int:
        d, h, w = self.shape
        return d * h * w

    @property
    def covered(self) -> tuple[float, float, float]:
        return tuple(g * c for g, c in zip(self.shape, self.cell, strict=False))  # type: ignore[return-value]


@dataclass(frozen=True)
class TokenLayout:
    """How a target's activation was read: the layout, the prefix token count and the grid."""

    layout: str
    prefix: int
    grid: TokenGrid


def grid_from_patches(input_shape: tuple[int, ...], patch: tuple[int, ...]) -> TokenGrid:
    shape = tuple(s // p for s, p in zip(input_shape, patch, strict=False))
    return TokenGrid(shape, tuple(float(p) for p in patch), tuple(input_shape))  # type: ignore[arg-type]


def grid_over_input(shape: Triple, input_shape: Triple) -> TokenGrid:
    """A feature map that spans the whole input (CNN): cells of input/shape voxels."""
    cell = tuple(s / g for s, g in zip(input_shape, shape, strict=False))
    return TokenGrid(tuple(int(g) for g in shape), cell, input_shape)  # type: ignore[arg-type]


def _is_channel_last_module(module: nn.Module | None, channels: int) -> bool:
    if isinstance(module, nn.LayerNorm):
        return tuple(module.normalized_shape) == (channels,)
    if isinstance(module, nn.Linear):
        return module.out_features == channels
    return False


def as_tokens(
    activation: torch.Tensor,
    patch_grid: TokenGrid | None,
    input_shape: tuple[int, ...],
    *,
    layout: Layout | str = "auto",
    module: nn.Module | None = None,
    name: str = "target",
) -> tuple[torch.Tensor, TokenLayout]:
    """Read ``activation`` as (B, N, E) tokens in (d, h, w) row-major order.

    ``patch_grid`` is the grid the model's patch embedding made (None for a
    CNN). Prefix tokens of a ViT are dropped.
    """
    if layout not in LAYOUTS:
        raise LayoutError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    shape = tuple(activation.shape)
    if layout == "auto":
        layout = _guess_layout(activation, patch_grid, module)
    input_shape = tuple(int(s) for s in input_shape)
    if layout == "tokens":
        if activation.ndim != 3:
            raise LayoutError(f"{name} output has shape {shape}: 'tokens' layout expects (B, T, E)")
        if patch_grid is None:
            raise LayoutError(
                f"{name} output has shape {shape} (tokens), but the model has no patch embedding "
                "or declared patch size to place them: pass token_grid=(d, h, w)"
            )
        prefix = shape[1] - patch_grid.n_tokens
        if prefix < 0:
            raise LayoutError(
                f"{name} output has shape {shape}: expected (B, prefix + {patch_grid.n_tokens}, E) "
                f"tokens for the grid {patch_grid.shape}; choose a layer inside the transformer blocks, "
                "or pass token_grid=(d, h, w) where a convolution before the transformer makes that grid"
            )
        return activation[:, prefix:], TokenLayout("tokens", prefix, patch_grid)
    if activation.ndim != 5:
        raise LayoutError(
            f"{name} output has shape {shape}: a '{layout}' map must be 5-D (B, E, d, h, w) or (B, d, h, w, E)"
        )
    if layout == "channels_first":
        spatial = shape[2:]
        tokens = activation.flatten(2).transpose(1, 2)
    else:
        spatial = shape[1:4]
        tokens = activation.flatten(1, 3)
    if patch_grid is not None and tuple(spatial) == patch_grid.shape:
        grid = patch_grid
    else:
        grid = grid_over_input(spatial, input_shape)  # type: ignore[arg-type]
    return tokens, TokenLayout(layout, 0, grid)


def _guess_layout(activation: torch.Tensor, patch_grid: TokenGrid | None, module: nn.Module | None) -> str:
    shape = tuple(activation.shape)
    if activation.ndim == 3:
        return "tokens"
    if activation.ndim == 5:
        if patch_grid is not None:
            if shape[2:] == patch_grid.shape:
                return "channels_first"
            if shape[1:4] == patch_grid.shape:
                return "channels_last"
        if _is_channel_last_module(module, shape[-1]):
            return "channels_last"
        return "channels_first"
    raise LayoutError(
        f"target output has shape {shape}; expected ViT tokens (B, T, E), a channel-first "
        "map (B, E, d, h, w) or a channel-last map (B, d, h, w, E): choose another layer"
    )
