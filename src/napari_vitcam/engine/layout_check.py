"""Establishing a 5-D layer output's axis order by asking the model, never by guessing.

A (B, a, b, c, e) output is either channel-first (B, E, d, h, w), as a CNN's
feature maps, or channel-last (B, d, h, w, E), as a Swin block's output or
vit-pytorch's SimpleViT patch embedding. When the model's patch grid matches
the spatial axes of exactly one reading, that settles it. Otherwise
:func:`establish_layout` perturbs a few input patches (one copy each, all in
one batch) and checks, under each reading, whether the token whose patch was
perturbed is the one that responds most. The reading where they do is the
layout; when neither or both readings do, it is a one-line
:class:`~napari_vitcam.core.errors.LayoutError` that names the layer and how to
say the layout (``layout=``, ``token_grid=``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from napari_vitcam.core.errors import LayoutError
from napari_vitcam.core.vocabulary import Triple
from napari_vitcam.engine.capture import capture_outputs, eval_mode
from napari_vitcam.engine.token_grid import TokenGrid, as_tokens, grid_over_input

PROBES = 4
_SEED = 0


def _spatial(shape: tuple[int, ...], layout: str) -> Triple:
    return tuple(shape[2:5]) if layout == "channels_first" else tuple(shape[1:4])  # type: ignore[return-value]


def readings(shape: tuple[int, ...], patch_grid: TokenGrid | None, input_shape: Triple) -> dict[str, TokenGrid]:
    """Each layout a 5-D ``shape`` could be, with the grid it would put over the input."""
    out: dict[str, TokenGrid] = {}
    for layout in ("channels_first", "channels_last"):
        spatial = _spatial(shape, layout)
        if any(s > i for s, i in zip(spatial, input_shape, strict=True)) or math.prod(spatial) < 2:
            continue  # more cells than voxels along an axis: not a map over this input
        if patch_grid is not None and spatial == patch_grid.shape:
            out[layout] = patch_grid
        else:
            out[layout] = grid_over_input(spatial, input_shape)
    return out


def probe_cells(grid: TokenGrid, count: int = PROBES) -> list[Triple]:
    """``count`` distinct cells spread over the grid, none of them mirror images of each other."""
    cells: list[Triple] = []
    fractions = ((0.1, 0.6, 0.35), (0.85, 0.2, 0.7), (0.45, 0.9, 0.05), (0.3, 0.4, 0.95), (0.65, 0.05, 0.5))
    for fraction in fractions:
        cell = tuple(min(int(f * g), g - 1) for f, g in zip(fraction, grid.shape, strict=True))
        if cell not in cells:
            cells.append(cell)  # type: ignore[arg-type]
        if len(cells) == count:
            break
    return cells


def _bounds(index: int, cell: float) -> slice:
    return slice(math.floor(index * cell + 1e-9), math.floor((index + 1) * cell + 1e-9))


def _hits(model, x1, target, name, layout, grid, input_shape) -> int:
    """How many probes make the perturbed cell's token respond most, under ``layout``."""
    cells = probe_cells(grid)
    generator = torch.Generator().manual_seed(_SEED)
    noise = torch.randn(x1.shape, generator=generator).to(device=x1.device, dtype=x1.dtype)
    scale = 3.0 * float(x1.float().std()) + 1.0
    batch = x1.repeat(len(cells) + 1, *([1] * (x1.ndim - 1)))
    for n, cell in enumerate(cells, start=1):
        region = (slice(None), *(_bounds(c, s) for c, s in zip(cell, grid.cell, strict=True)))
        batch[n][region] += scale * noise[0][region]
    with eval_mode(model), torch.no_grad(), capture_outputs({name: target}, copy=True) as seen:
        model(batch)
    if not seen[name]:
        return 0
    tokens, _ = as_tokens(seen[name][-1].float(), grid, input_shape, layout=layout, name=name)
    response = (tokens[1:] - tokens[:1]).abs().sum(dim=-1)
    hits = 0
    for n, cell in enumerate(cells):
        top = int(response[n].argmax())
        hits += tuple(int(i) for i in torch.unravel_index(torch.tensor(top), grid.shape)) == cell
    return hits


def establish_layout(
    model: nn.Module,
    x1: torch.Tensor,
    target: nn.Module,
    name: str,
    shape: tuple[int, ...],
    patch_grid: TokenGrid | None,
    input_shape: tuple[int, ...],
) -> str:
    """``"channels_first"`` or ``"channels_last"`` for ``target``'s 5-D output of ``shape``.

    Args:
        model: the model, run on perturbed copies of ``x1`` when the grid does not settle it.
        x1: one input (1, C, D, H, W) on the model's device.
        target: the layer; ``name`` its dotted name, for the messages.
        shape: the shape of its output.
        patch_grid: the model's token grid, or None.
        input_shape: the input's spatial shape.
    """
    input_shape = tuple(int(s) for s in input_shape)
    options = readings(shape, patch_grid, input_shape)  # type: ignore[arg-type]
    by_grid = [layout for layout, grid in options.items() if grid is patch_grid]
    if len(by_grid) == 1:
        return by_grid[0]
    if len(options) == 1:
        return next(iter(options))
    hits = {layout: _hits(model, x1[:1], target, name, layout, grid, input_shape) for layout, grid in options.items()}
    ranked = sorted(hits, key=hits.__getitem__, reverse=True)
    if len(ranked) == 2 and hits[ranked[0]] >= math.ceil(PROBES / 2) and hits[ranked[0]] > hits[ranked[1]]:
        return ranked[0]
    raise LayoutError(
        f"cannot establish the axis order of {name!r} output {tuple(shape)}: perturbed input patches do not "
        f"move their own cells under either reading ({', '.join(f'{k} {v}/{PROBES}' for k, v in hits.items())}); "
        "pass layout='channels_first' or 'channels_last' (and token_grid=(d, h, w)) or choose another layer"
    )
