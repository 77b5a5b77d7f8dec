"""Faithfulness: does the model's answer change when what the map ranks first is taken away?

Deletion and insertion curves (Petsiuk, Das & Saenko 2018, "RISE: Randomized
Input Sampling for Explanation of Black-box Models", BMVC), in 3D, by patch:
the grid's cells are removed from the model input (deletion) or revealed on a
baseline (insertion) in the order the map ranks them, and the explained
class's probability is recorded after each step. The same curves for random
orders give the band a map must beat. :func:`deletion_and_insertion` plans
both curves and the band together, so that an input two curves share (the
input itself, the baseline, the random band seen from either end) runs once,
and runs every perturbed input as batches on the model's device.

A perturbation needs a baseline, and a baseline can itself look like
evidence to the model (a mean-filled or blurred patch can look like a new
lesion). So the baseline is a choice that is recorded with every curve
(``blur``, ``mean``, ``noise`` or a ``reference`` volume such as a healthy
scan), and :func:`compare_baselines` shows how much the curves move between
baselines.

:func:`agreement` is the cheap check run after every explanation: the drop in
the class probability when the map's top cells are removed, against random
cells of the same number.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import torch
from torch import nn

from napari_vitcam.core.errors import Cancelled, InputError
from napari_vitcam.engine.cam import as_probabilities
from napari_vitcam.engine.capture import eval_mode, model_lock
from napari_vitcam.engine.introspect import ends_in_sigmoid, read_logits
from napari_vitcam.engine.token_grid import TokenGrid

Mode = Literal["deletion", "insertion"]
MODES: tuple[Mode, ...] = get_args(Mode)
Baseline = Literal["blur", "mean", "noise", "reference"]
BASELINES: tuple[Baseline, ...] = get_args(Baseline)
InputsDone = Callable[[int, int], None]
"""Told how many perturbed inputs have run, of how many."""


@dataclass(frozen=True)
class PerturbationCurves:
    """A deletion or insertion curve for a map, and the same curve for random orders.

    Args:
        mode: ``deletion`` (cells removed, most relevant first) or ``insertion``
            (cells revealed on the baseline, most relevant first).
        baseline: what replaced the removed (or hidden) voxels.
        class_idx: the class whose probability is recorded.
        fractions: (K,) the share of the grid's cells removed or revealed at each step.
        ranked: (K,) the class probability along the map's order.
        random: (R, K) the same along R random orders.
        compared: (K,) the same along other maps' orders (e.g. ``"occlusion"``), by name.
        seed: the seed of the random orders (and of the noise baseline).
    """

    mode: Mode
    baseline: str
    class_idx: int
    fractions: np.ndarray
    ranked: np.ndarray
    random: np.ndarray
    compared: Mapping[str, np.ndarray] = field(default_factory=dict)
    seed: int = 0

    @property
    def auc(self) -> float:
        """Area under the map's curve (lower is better for deletion, higher for insertion)."""
        return _area(self.fractions, self.ranked)

    @property
    def random_aucs(self) -> np.ndarray:
        return np.array([_area(self.fractions, curve) for curve in self.random])

    @property
    def random_auc(self) -> float:
        return float(self.random_aucs.mean())

    @property
    def compared_aucs(self) -> dict[str, float]:
        """Area under each compared map's curve, by name."""
        return {name: _area(self.fractions, curve) for name, curve in self.compared.items()}

    @property
    def beats_random(self) -> bool:
        """The map's curve falls faster (deletion) or rises faster (insertion) than every random order's."""
        if self.mode == "deletion":
            return bool(self.auc < self.random_aucs.min())
        return bool(self.auc > self.random_aucs.max())

    def as_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "baseline": self.baseline,
            "class_idx": self.class_idx,
            "auc": self.auc,
            "random_auc": self.random_auc,
            "random_auc_std": float(self.random_aucs.std()),
            "beats_random": self.beats_random,
            "fractions": self.fractions.tolist(),
            "ranked": self.ranked.tolist(),
            "random": self.random.tolist(),
            "compared": {
                name: {"auc": self.compared_aucs[name], "curve": curve.tolist()}
                for name, curve in self.compared.items()
            },
        }


@dataclass(frozen=True)
class Agreement:
    """How much the class probability drops when the map's top cells are removed, against random cells.

    Args:
        class_idx: the class explained.
        cells: how many cells were removed.
        baseline: what replaced them.
        probability: the class probability on the whole input.
        drop: the drop when the map's top cells are removed.
        random_drops: the drops for random sets of as many cells.
    """

    class_idx: int
    cells: int
    baseline: str
    probability: float
    drop: float
    random_drops: np.ndarray = field(repr=False)

    @property
    def random_drop(self) -> float:
        return float(self.random_drops.mean())

    @property
    def margin(self) -> float:
        """How far the map's drop lies above the random drops, in their standard deviations (at least 0.01)."""
        spread = max(float(self.random_drops.std()), 0.01)
        return (self.drop - self.random_drop) / spread

    @property
    def better_than_random(self) -> bool:
        """The map's cells matter clearly more than random ones: a drop over two spreads above the random mean."""
        return bool(self.margin > 2.0)

    @property
    def line(self) -> str:
        """One line for a person: what was measured and whether the map did better than chance."""
        text = (
            f"removing the map's top {self.cells} cells ({self.baseline}) lowers p from {self.probability:.2f} "
            f"by {_two_places(self.drop)}; random cells: {_two_places(self.random_drop)}"
        )
        if self.better_than_random:
            return text
        return text + " — the map does no better than random cells: do not trust it"

    def as_dict(self) -> dict[str, object]:
        return {
            "class_idx": self.class_idx,
            "cells": self.cells,
            "baseline": self.baseline,
            "probability": self.probability,
            "drop": self.drop,
            "random_drop": self.random_drop,
            "random_drops": self.random_drops.tolist(),
            "margin": self.margin,
            "better_than_random": self.better_than_random,
        }


def _two_places(value: float) -> str:
    """``0.12``; a value that rounds to zero is ``0.00``, never ``-0.00``."""
    return f"{value:.2f}" if round(value, 2) != 0 else "0.00"


def _area(fractions: np.ndarray, values: np.ndarray) -> float:
    return float(np.sum((values[1:] + values[:-1]) * np.diff(fractions)) / 2.0)


def cell_index(grid: TokenGrid, device: torch.device) -> torch.Tensor:
    """(D, H, W) long: the grid cell (row-major token index) each model-input voxel lies in, -1 outside the grid."""
    axes = []
    for size, cells, cell in zip(grid.input_shape, grid.shape, grid.cell, strict=True):
        index = torch.div(torch.arange(size, device=device, dtype=torch.float64) + 0.5, cell, rounding_mode="floor")
        index = index.long()
        axes.append(torch.where(index < cells, index, torch.full_like(index, -1)))
    _, h, w = grid.shape
    i, j, k = torch.meshgrid(*axes, indexing="ij")
    flat = (i * h + j) * w + k
    return torch.where((i < 0) | (j < 0) | (k < 0), torch.full_like(flat, -1), flat)


def _blur_matrix(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(size, size): a Gaussian of ``sigma`` (cut at 3 sigma, at most ``size - 1``) with reflected edges, as a matrix.

    Row ``i`` holds the weights output voxel ``i`` takes from each input voxel:
    a separable blur is then one small matrix product per axis, far cheaper on
    a CPU than a convolution with a long kernel.
    """
    radius = min(max(1, math.ceil(3 * sigma)), size - 1)
    if radius < 1:
        return torch.eye(size, device=device, dtype=dtype)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (taps / sigma) ** 2)
    weights = weights / weights.sum()
    index = torch.arange(size)[:, None] + taps.long()[None, :]
    index = torch.where(index < 0, -index, index)  # reflect, as F.pad(mode="reflect")
    index = torch.where(index > size - 1, 2 * (size - 1) - index, index)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    matrix.scatter_add_(1, index, weights.expand(size, -1).contiguous())
    return matrix.to(device, dtype)


def _blur(x: torch.Tensor, sigma: Sequence[float]) -> torch.Tensor:
    """A separable Gaussian blur of (1, C, D, H, W) along each spatial axis, reflect-padded, per channel."""
    out = x
    for axis, s in enumerate(sigma):
        matrix = _blur_matrix(x.shape[2 + axis], float(s), x.device, x.dtype)
        out = torch.movedim(torch.movedim(out, 2 + axis, -1) @ matrix.T, -1, 2 + axis)
    return out


def baseline_input(
    x: torch.Tensor,
    kind: str,
    grid: TokenGrid,
    *,
    reference: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """What removed voxels become: a blurred copy, the per-channel mean, matched noise, or a reference.

    Args:
        x: the model input, (1, C, D, H, W).
        kind: one of :data:`BASELINES`.
        grid: the token grid (the blur's width is one cell).
        reference: the ``reference`` baseline, already brought to the model input (same shape as ``x``).
        seed: the noise baseline's seed.
    """
    if kind == "blur":
        return _blur(x, grid.cell)
    if kind == "mean":
        return x.mean(dim=(2, 3, 4), keepdim=True).expand_as(x).clone()
    if kind == "noise":
        generator = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
        mean = x.mean(dim=(2, 3, 4), keepdim=True)
        std = x.std(dim=(2, 3, 4), keepdim=True)
        return mean + noise * std
    if kind == "reference":
        if reference is None:
            raise InputError("the 'reference' baseline needs a reference volume (e.g. a healthy scan): give one")
        if tuple(reference.shape) != tuple(x.shape):
            raise InputError(
                f"the reference has shape {tuple(reference.shape)} but the model input {tuple(x.shape)}: "
                "prepare it like the volume"
            )
        return reference.to(x.device, x.dtype)
    raise InputError(f"unknown baseline {kind!r}: choose one of {', '.join(BASELINES)}")


def _check_inputs(x: torch.Tensor, token_map: object, grid: TokenGrid) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 5 or x.shape[0] != 1:
        raise InputError("x must be one model input, a (1, C, D, H, W) tensor")
    if tuple(x.shape[2:]) != tuple(grid.input_shape):
        raise InputError(f"x has spatial shape {tuple(x.shape[2:])} but the grid covers {grid.input_shape}")
    values = torch.as_tensor(np.asarray(token_map) if not isinstance(token_map, torch.Tensor) else token_map)
    if tuple(values.shape) != tuple(grid.shape):
        raise InputError(f"the token map has shape {tuple(values.shape)} but the grid is {grid.shape}")
    values = values.detach().float().reshape(-1)
    if not bool(torch.isfinite(values).all()):
        raise InputError("the token map has non-finite values: recompute it")
    return values


class _Prober:
    """Runs the model on batches of inputs in which chosen cells show the baseline, returning the class probability.

    Every perturbed input is named by what it hides: the first ``count`` cells
    of an order (row-major cell indices, most relevant first). Voxels outside
    the grid's cells (the remainder a patch embedding drops) always keep the
    input.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        baseline: torch.Tensor,
        grid: TokenGrid,
        class_idx: int,
        batch_size: int,
    ):
        self.model = model
        self.x = x
        self.baseline = baseline
        self.cells = cell_index(grid, x.device)
        self.n = grid.n_tokens
        self.class_idx = class_idx
        self.batch_size = max(1, int(batch_size))
        self.sigmoid_output = ends_in_sigmoid(model)

    def probabilities(self, inputs: torch.Tensor) -> torch.Tensor:
        scores = read_logits(self.model(inputs))
        return as_probabilities(scores, sigmoid_output=self.sigmoid_output)[:, self.class_idx]

    def voxel_ranks(self, order: torch.Tensor) -> torch.Tensor:
        """(D, H, W): each voxel's cell's place in ``order``; voxels outside the grid rank last (never hidden)."""
        ranks = torch.empty_like(order)
        ranks[order] = torch.arange(order.numel(), device=order.device)
        return torch.where(self.cells >= 0, ranks[self.cells.clamp(min=0)], torch.full_like(self.cells, self.n))

    def hidden(
        self,
        orders: Sequence[torch.Tensor],
        requests: Sequence[tuple[int, int]],
        *,
        cancel: threading.Event | None = None,
        progress: InputsDone | None = None,
    ) -> torch.Tensor:
        """Probabilities after hiding the first ``count`` cells of ``orders[i]``, for each ``(i, count)``, batched.

        ``cancel`` is looked at before each batch (:class:`Cancelled`); ``progress`` hears after each.
        """
        voxel_ranks: dict[int, torch.Tensor] = {}
        out = []
        for first in range(0, len(requests), self.batch_size):
            if progress is not None:
                progress(first, len(requests))
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled")
            chunk = requests[first : first + self.batch_size]
            masks = []
            for index, count in chunk:
                if index not in voxel_ranks:
                    voxel_ranks[index] = self.voxel_ranks(orders[index])
                masks.append(voxel_ranks[index] < count)
            out.append(self.probabilities(torch.where(torch.stack(masks)[:, None], self.baseline, self.x)))
        if progress is not None:
            progress(len(requests), len(requests))
        return torch.cat(out) if out else torch.empty(0, device=self.x.device)


def ranked_order(values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The cells from the most relevant down; cells of equal value in random order.

    A map that is flat over many cells (an occlusion map of a confident model,
    a map that is zero outside one region) does not rank them, so a fixed
    tie-break (such as row-major order) would be a hidden ordering of its own.
    """
    flat = values.detach().reshape(-1).cpu()
    shuffle = torch.randperm(flat.numel(), generator=generator)
    return shuffle[torch.argsort(flat[shuffle], descending=True, stable=True)]


def _tie_breaker(seed: int) -> torch.Generator:
    """The generator that orders a map's tied cells: apart from the random orders', so the band does not depend on the maps."""
    return torch.Generator(device="cpu").manual_seed(seed + 1)


def _counts(n: int, steps: int) -> list[int]:
    """How many cells each of ``steps + 1`` points hides, from 0 to ``n``; the list is its own mirror (c and n - c)."""
    half = {round(n * i / steps) for i in range(steps // 2 + 1)}
    return sorted(half | {n - c for c in half})


@dataclass(frozen=True)
class _CurvePlan:
    """Every curve of a deletion/insertion run as hidden-cell requests, each distinct input listed once.

    Deletion along an order at ``k`` cells hides the order's first ``k``;
    insertion along an order at ``k`` reveals its first ``k``, that is, hides
    the first ``n - k`` of the reversed order. A random insertion order is the
    reverse of a random deletion order (still a uniformly random order), so
    the two random bands are the same inputs read from opposite ends; no
    cells hidden (the input itself) and all hidden (the baseline) are shared
    by every curve.

    The orders are numbered: each ranked map ``m`` has ``2 m`` (its order) and
    ``2 m + 1`` (reversed); random order ``r`` is ``2 maps + r``.

    Args:
        n: cells in the grid.
        counts: cells removed (deletion) or revealed (insertion) at each point.
        modes: the curves' modes.
        maps: ranked maps (the map explained, then any compared with it).
        random_orders: random orders per mode.
    """

    n: int
    counts: tuple[int, ...]
    modes: tuple[Mode, ...]
    maps: int
    random_orders: int

    def curve(self, mode: Mode, curve: int) -> list[tuple[int, int]]:
        """The requests of one curve: ``curve`` below ``maps`` is a ranked map's, the rest random orders."""
        # a random order's insertion curve hides the tail of its deletion order: the same order
        order = 2 * curve + (mode == "insertion") if curve < self.maps else self.maps + curve
        hidden = self.counts if mode == "deletion" else [self.n - count for count in self.counts]
        return [self.key(order, count) for count in hidden]

    def key(self, order: int, hidden: int) -> tuple[int, int]:
        if hidden == 0:
            return (-1, 0)  # the input itself
        if hidden >= self.n:
            return (-1, self.n)  # the baseline everywhere in the grid
        return (order, hidden)

    def requests(self) -> list[tuple[int, int]]:
        """The distinct inputs, in the order they are run."""
        seen: dict[tuple[int, int], None] = {}
        for mode in self.modes:
            for curve in range(self.maps + self.random_orders):
                seen.update(dict.fromkeys(self.curve(mode, curve)))
        return list(seen)


def _known_from_band(
    band: PerturbationCurves | None, plan: _CurvePlan, baseline: str, class_idx: int, seed: int
) -> dict[tuple[int, int], float]:
    """The probabilities ``band`` already holds, by request: its random deletion orders, the input, the baseline."""
    if band is None:
        return {}
    fractions = np.array(plan.counts, dtype=np.float64) / plan.n
    same = (
        band.baseline == baseline
        and band.class_idx == class_idx
        and band.seed == seed
        and band.random.shape == (plan.random_orders, len(plan.counts))
        and np.array_equal(band.fractions, fractions)
    )
    if not same:
        raise InputError(
            "the band to reuse was computed with another baseline, class, seed, number of points or of random "
            "orders: compute the curves without it"
        )
    # a deletion band holds the random orders' hidden counts as they are; an insertion band, mirrored
    hidden = plan.counts if band.mode == "deletion" else [plan.n - count for count in plan.counts]
    known: dict[tuple[int, int], float] = {}
    for r in range(plan.random_orders):
        for count, value in zip(hidden, band.random[r], strict=True):
            known[plan.key(plan.maps + plan.maps + r, count)] = float(value)
    return known


def perturbed_inputs(
    n_cells: int, *, steps: int = 16, random_orders: int = 3, modes: Sequence[Mode] = MODES, maps: int = 1
) -> int:
    """How many distinct perturbed inputs :func:`deletion_and_insertion` runs (its cost in forward passes, unbatched).

    ``maps``: the map explained and any compared with it.
    """
    return len(_CurvePlan(n_cells, tuple(_counts(n_cells, steps)), tuple(modes), maps, random_orders).requests())


def deletion_and_insertion(
    model: nn.Module,
    x: torch.Tensor,
    token_map: object,
    grid: TokenGrid,
    class_idx: int,
    *,
    modes: Sequence[Mode] = MODES,
    baseline: str = "blur",
    reference: torch.Tensor | None = None,
    steps: int = 16,
    random_orders: int = 3,
    seed: int = 0,
    batch_size: int = 8,
    compared: Mapping[str, object] | None = None,
    cancel: threading.Event | None = None,
    progress: InputsDone | None = None,
    band: PerturbationCurves | None = None,
) -> dict[Mode, PerturbationCurves]:
    """The deletion and insertion curves of ``token_map`` and of ``random_orders`` random orders, sharing inputs.

    Both curves of the map, and the random band, are planned together: the
    unperturbed input and the baseline are run once for every curve, and the
    insertion band uses the reversed deletion orders, so its inputs are the
    deletion band's. With 16 steps and 3 random orders that is 77 distinct
    inputs instead of 136, run in batches of ``batch_size``.

    Args:
        model: the classifier (left as it was: eval mode is restored, no parameter changes).
        x: the model input (1, C, D, H, W) the map explains, on the model's device.
        token_map: (d, h, w) the map on the grid's cells (higher: more relevant).
        grid: the token grid over ``x``.
        class_idx: the class whose probability is recorded.
        modes: which curves, ``deletion`` and/or ``insertion``.
        baseline: one of :data:`BASELINES`.
        reference: the reference volume for ``baseline="reference"``.
        steps: each curve has ``steps + 1`` points, from 0 to all cells (fewer where the grid has fewer cells).
        random_orders: how many random orders make the band.
        seed: for the random orders and the noise baseline.
        batch_size: perturbed inputs per forward pass.
        compared: other maps on the same grid (e.g. ``{"occlusion": ...}``), whose curves are drawn beside the
            map's with the same baseline and random band (``2 * (steps - 1)`` more inputs each).
        cancel: set it to stop before the next batch (raises :class:`~napari_vitcam.core.errors.Cancelled`).
        progress: called with (inputs run, inputs in all) before each batch and at the end.
        band: curves computed earlier for another map of the same model, input, class and baseline, with the same
            steps, random orders and seed: their random band and the input's and the baseline's probabilities are
            reused, not run again (30 of 77 inputs left with the defaults). The caller vouches for the model and the
            input; the rest is checked.
    """
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise InputError(f"unknown mode {unknown[0] if unknown else None!r}: choose one of {', '.join(MODES)}")
    if steps < 1 or random_orders < 1:
        raise InputError("steps and random_orders must be at least 1")
    others = dict(compared or {})
    maps = [_check_inputs(x, token_map, grid)] + [_check_inputs(x, other, grid) for other in others.values()]
    n = grid.n_tokens
    plan = _CurvePlan(n, tuple(_counts(n, steps)), tuple(dict.fromkeys(modes)), len(maps), random_orders)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    ties = _tie_breaker(seed)
    with model_lock(model), torch.no_grad(), eval_mode(model):
        fill = baseline_input(x, baseline, grid, reference=reference, seed=seed)
        prober = _Prober(model, x, fill, grid, int(class_idx), batch_size)
        orders = []
        for values in maps:
            ranked = ranked_order(values, ties).to(x.device)
            orders += [ranked, ranked.flip(0)]
        orders += [torch.randperm(n, generator=generator).to(x.device) for _ in range(random_orders)]
        probabilities = _known_from_band(band, plan, baseline, int(class_idx), seed)
        requests = [key for key in plan.requests() if key not in probabilities]
        runnable = [(max(order, 0), hidden) for order, hidden in requests]  # the shared ends hide 0 or n of any order
        measured = prober.hidden(orders, runnable, cancel=cancel, progress=progress).cpu().numpy().astype(np.float64)
        probabilities.update(zip(requests, measured.tolist(), strict=True))
    fractions = np.array(plan.counts, dtype=np.float64) / n

    def values_of(mode: Mode, curve: int) -> np.ndarray:
        return np.array([probabilities[key] for key in plan.curve(mode, curve)])

    return {
        mode: PerturbationCurves(
            mode=mode,
            baseline=baseline,
            class_idx=int(class_idx),
            fractions=fractions,
            ranked=values_of(mode, 0),
            random=np.stack([values_of(mode, len(maps) + r) for r in range(random_orders)]),
            compared={name: values_of(mode, 1 + index) for index, name in enumerate(others)},
            seed=seed,
        )
        for mode in plan.modes
    }


def perturbation_curves(
    model: nn.Module,
    x: torch.Tensor,
    token_map: object,
    grid: TokenGrid,
    class_idx: int,
    *,
    mode: Mode = "deletion",
    baseline: str = "blur",
    reference: torch.Tensor | None = None,
    steps: int = 16,
    random_orders: int = 3,
    seed: int = 0,
    batch_size: int = 8,
) -> PerturbationCurves:
    """The deletion or insertion curve of ``token_map`` and of random orders: :func:`deletion_and_insertion` for one mode.

    Args:
        model, x, token_map, grid, class_idx, baseline, reference, steps, random_orders, seed, batch_size:
            as for :func:`deletion_and_insertion`.
        mode: ``deletion`` or ``insertion``.
    """
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    curves = deletion_and_insertion(
        model,
        x,
        token_map,
        grid,
        class_idx,
        modes=(mode,),
        baseline=baseline,
        reference=reference,
        steps=steps,
        random_orders=random_orders,
        seed=seed,
        batch_size=batch_size,
    )
    return curves[mode]


def compare_baselines(
    model: nn.Module,
    x: torch.Tensor,
    token_map: object,
    grid: TokenGrid,
    class_idx: int,
    *,
    baselines: Sequence[str] = ("blur", "mean", "noise"),
    reference: torch.Tensor | None = None,
    **options: object,
) -> dict[str, PerturbationCurves]:
    """:func:`perturbation_curves` once per baseline, to see how much the answer depends on it.

    Args:
        model, x, token_map, grid, class_idx: as for :func:`perturbation_curves`.
        baselines: the baselines to compare.
        reference: the reference volume, where ``"reference"`` is among them.
        options: passed on (mode, steps, random_orders, seed, batch_size).
    """
    return {
        name: perturbation_curves(model, x, token_map, grid, class_idx, baseline=name, reference=reference, **options)  # type: ignore[arg-type]
        for name in baselines
    }


def agreement(
    model: nn.Module,
    x: torch.Tensor,
    token_map: object,
    grid: TokenGrid,
    class_idx: int,
    *,
    share: float = 0.1,
    baseline: str = "blur",
    reference: torch.Tensor | None = None,
    draws: int = 7,
    seed: int = 0,
    batch_size: int = 8,
    cancel: threading.Event | None = None,
    probability: float | None = None,
) -> Agreement:
    """The class probability's drop when the map's top ``share`` of cells is removed, against random cells.

    ``draws + 2`` inputs (``draws + 1`` with ``probability``) in batches of ``batch_size``: cheap enough to run
    after every explanation.

    Args:
        model, x, token_map, grid, class_idx: as for :func:`perturbation_curves`.
        share: the share of the grid's cells removed (at least one).
        baseline: what replaces them.
        reference: the reference volume for ``baseline="reference"``.
        draws: how many random sets of cells to compare with.
        seed: for the random sets.
        batch_size: inputs per forward pass.
        cancel: set it to stop before the next batch (raises :class:`~napari_vitcam.core.errors.Cancelled`).
        probability: the class probability on ``x`` when it is known (the explanation's own): one input less.
    """
    values = _check_inputs(x, token_map, grid).to(x.device)
    n = grid.n_tokens
    cells = max(1, min(n, round(n * share)))
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with model_lock(model), torch.no_grad(), eval_mode(model):
        fill = baseline_input(x, baseline, grid, reference=reference, seed=seed)
        prober = _Prober(model, x, fill, grid, int(class_idx), batch_size)
        ties = _tie_breaker(seed)
        orders = [ranked_order(values, ties).to(x.device)]
        orders += [torch.randperm(n, generator=generator).to(x.device) for _ in range(draws)]
        whole = [] if probability is not None else [(0, 0)]
        probabilities = prober.hidden(orders, whole + [(i, cells) for i in range(len(orders))], cancel=cancel)
    measured = probabilities.cpu().numpy().astype(np.float64).tolist()
    full = float(probability) if probability is not None else measured.pop(0)
    drops = full - np.array(measured)
    return Agreement(
        class_idx=int(class_idx),
        cells=cells,
        baseline=baseline,
        probability=full,
        drop=float(drops[0]),
        random_drops=drops[1:],
    )
