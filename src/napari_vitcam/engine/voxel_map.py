"""Token map -> voxels: put each token's value back where its patch was.

The mapping is separable, so it runs one axis at a time as a product with a
small interpolation matrix (at most two non-zeros per row): no per-voxel
Python loops, no spline prefilter, no trip through numpy, and it stays on the
token map's device. (A non-finite token value would spread along its rows;
Grad-CAM maps of a finite model are finite.)

Coordinates: voxel ``u`` of an output axis of ``n_out`` voxels spans the same
physical extent as the model input's ``input_size`` voxels, so its centre lies at
input coordinate ``m = (u + 0.5) * input_size / n_out`` (input voxel ``k`` spans
``[k, k+1)``). Token ``i`` covers ``[i * cell, (i + 1) * cell)``.

* ``"patch"``: the voxel takes the value of the token whose patch holds ``m``
  (the write-up's restoration: each token fills its patch).
* ``"smooth"``: linear interpolation between token centres at
  ``(i + 0.5) * cell``, clamped at the outer half-patches. This is trilinear
  interpolation with ``align_corners=False``: a token's value peaks at its patch
  centre, with no half-patch shift and no overshoot.

Voxels whose centre lies beyond the last whole patch (input size not a multiple
of the patch size) were never seen by the model: they get 0 in both modes.

A ``placement`` ``(a, b)`` per axis replaces the resize convention above with
any axis-aligned map ``m = a * u + b`` (a volume resampled, cropped or padded
into the model input: :mod:`napari_vitcam.pipeline.frame`); voxels with ``m``
outside the input (cropped away) get 0.
"""

from __future__ import annotations

import torch

from napari_vitcam.core.vocabulary import UPSAMPLE_MODES, Upsample
from napari_vitcam.engine.token_grid import TokenGrid

_Taps = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]


def axis_taps(
    n_out: int,
    n_tokens: int,
    cell: float,
    input_size: int,
    mode: str,
    device: torch.device,
    placement: tuple[float, float] | None = None,
) -> _Taps:
    """Token indices and weights for each output voxel along one axis (``placement``: see the module doc)."""
    u = torch.arange(n_out, device=device, dtype=torch.float64)
    m = (u + 0.5) * (input_size / n_out) if placement is None else u * placement[0] + placement[1]
    inside = ((m >= 0) & (m < n_tokens * cell)).to(torch.float64)
    position = m / cell
    if mode == "patch":
        index = position.floor().long().clamp_(0, n_tokens - 1)
        return index, None, inside.float(), None
    t = position - 0.5
    lower = t.floor()
    frac = t - lower
    i0 = lower.long().clamp(0, n_tokens - 1)
    i1 = (lower.long() + 1).clamp_(0, n_tokens - 1)
    return i0, i1, ((1.0 - frac) * inside).float(), (frac * inside).float()


def axis_matrix(
    n_out: int,
    n_tokens: int,
    cell: float,
    input_size: int,
    mode: str,
    device: torch.device,
    placement: tuple[float, float] | None = None,
) -> torch.Tensor:
    """The (n_out, n_tokens) interpolation matrix of one axis: at most two non-zeros per row."""
    i0, i1, w0, w1 = axis_taps(n_out, n_tokens, cell, input_size, mode, device, placement)
    rows = torch.arange(n_out, device=device)
    matrix = torch.zeros(n_out, n_tokens, device=device)
    matrix.index_put_((rows, i0), w0, accumulate=True)
    if i1 is not None and w1 is not None:
        matrix.index_put_((rows, i1), w1, accumulate=True)
    return matrix


_AXIS_EINSUM = ("bdhw,Dd->bDhw", "bdhw,Hh->bdHw", "bdhw,Ww->bdhW")


def tokens_to_voxels(
    token_map: torch.Tensor,
    grid: TokenGrid,
    out_shape: tuple[int, int, int] | None = None,
    mode: Upsample = "smooth",
    placement: tuple[tuple[float, float], ...] | None = None,
) -> torch.Tensor:
    """Map ``token_map`` (B, d, h, w) on ``grid`` to voxels (B, *out_shape).

    ``out_shape`` defaults to the model input's shape; any other shape is taken
    to span the same extent (a volume that was resized to the model input), so
    the map lands on the voxels the model looked at, whatever the factors.
    ``placement``: per axis ``(a, b)``, output voxel ``u`` at input coordinate
    ``a * u + b`` instead (see the module doc).
    """
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {mode!r}")
    if tuple(token_map.shape[1:]) != tuple(grid.shape):
        raise ValueError(f"token map shape {tuple(token_map.shape)} does not match grid {grid.shape}")
    shape = tuple(grid.input_shape) if out_shape is None else tuple(int(s) for s in out_shape)
    x = token_map.float()
    # Expand the axes in order of growth, so the largest intermediate comes last.
    growth = sorted(range(3), key=lambda a: shape[a] / grid.shape[a])
    for axis in growth:
        matrix = axis_matrix(
            shape[axis],
            grid.shape[axis],
            grid.cell[axis],
            grid.input_shape[axis],
            mode,
            x.device,
            None if placement is None else placement[axis],
        )
        x = torch.einsum(_AXIS_EINSUM[axis], x, matrix)
    return x.contiguous()
