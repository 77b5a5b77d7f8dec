"""Against chance: does the map change when the model's weights are randomised?

The cascading model-parameter randomisation test (Adebayo et al. 2018,
"Sanity Checks for Saliency Maps", NeurIPS): the model's layers are
re-initialised from the top down (the head, then each block from the last to
the first, then the embedding), cumulatively, on a copy of the model, and the
same explainer is run after each step. A map that still correlates with the
original once every layer is random does not depend on what the model
learnt: it is flagged.

The loaded model is never modified: the test works on a deep copy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from napari_vitcam.engine.introspect import find_block_list

Explain = Callable[[nn.Module], torch.Tensor]
"""Runs the explainer on a model and returns its map (any shape; compared flattened)."""

SURVIVAL_THRESHOLD = 0.5
"""Rank correlation with the original map at or above which a fully randomised model's map is flagged."""


@dataclass(frozen=True)
class RandomizationStep:
    """One step of the cascade.

    Args:
        randomized: what this step re-initialised (``"head"``, a block's name, ``"embedding"``).
        correlation: Spearman rank correlation of the map with the original map.
    """

    randomized: str
    correlation: float


@dataclass(frozen=True)
class RandomizationResult:
    """The cascade's steps, top down, each cumulative.

    Args:
        steps: one per step, in the order they were applied.
        threshold: the correlation at or above which the last step flags the map.
    """

    steps: tuple[RandomizationStep, ...]
    threshold: float = SURVIVAL_THRESHOLD

    @property
    def final_correlation(self) -> float:
        return self.steps[-1].correlation if self.steps else float("nan")

    @property
    def survives(self) -> bool:
        """The map still looks like the original with every layer random: it does not show what the model learnt."""
        return bool(self.final_correlation >= self.threshold)

    @property
    def line(self) -> str:
        text = ", ".join(f"{s.randomized} {s.correlation:.2f}" for s in self.steps)
        verdict = (
            "the map survives randomisation: it does not depend on the trained weights"
            if self.survives
            else "the map changes as the model is randomised"
        )
        return f"rank correlation with the original map as layers are randomised ({text}): {verdict}"

    def as_dict(self) -> dict[str, object]:
        return {
            "steps": [{"randomized": s.randomized, "correlation": s.correlation} for s in self.steps],
            "threshold": self.threshold,
            "survives": self.survives,
        }


def rank_correlation(a: object, b: object) -> float:
    """Spearman's rank correlation of two maps (flattened), ties ranked by their average; 0 when either is constant."""
    x = _ranks(np.asarray(a, dtype=np.float64).ravel())
    y = _ranks(np.asarray(b, dtype=np.float64).ravel())
    if x.shape != y.shape:
        raise ValueError(f"maps of different sizes: {x.size} and {y.size}")
    x -= x.mean()
    y -= y.mean()
    norm = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / norm) if norm > 0 else 0.0


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]
    average = (starts + ends - 1) / 2.0
    ranks = np.empty(values.size)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def cascade(model: nn.Module) -> list[tuple[str, list[nn.Module | nn.Parameter]]]:
    """The steps of the cascade for ``model``, top down: ``(name, what it re-initialises)``.

    For a transformer: the modules after the block list (final norm, pooling,
    head), each block from the last to the first, then everything before (the
    patch embedding, position embeddings, cls token). Without a block list:
    the model's top-level children from the last to the first.
    """
    children = list(model.named_children())
    found = find_block_list(model)
    if found is None:
        steps: list[tuple[str, list[nn.Module | nn.Parameter]]] = [(n, [c]) for n, c in reversed(children)]
        own = list(model.parameters(recurse=False))
        if own and steps:
            steps[-1][1].extend(own)
        return steps
    container, blocks = found
    modules = dict(model.named_modules())
    top = container.split(".")[0] if container else blocks[0].split(".")[0]
    names = [n for n, _ in children]
    position = names.index(top)
    block_ids = {id(modules[b]) for b in blocks}
    head: list[nn.Module | nn.Parameter] = [c for _, c in children[position + 1 :]]
    if container:  # siblings of the blocks inside their container's parent (vit-pytorch's final norm)
        parent_name = container.rpartition(".")[0]
        parent = modules[parent_name] if parent_name else model
        if parent is not model:
            head += [c for _, c in parent.named_children() if c is not modules[container] and id(c) not in block_ids]
    embedding: list[nn.Module | nn.Parameter] = [c for _, c in children[:position]]
    embedding += list(model.parameters(recurse=False))
    steps = [("head", head)] if head else []
    steps += [(b, [modules[b]]) for b in reversed(blocks)]
    if embedding:
        steps.append(("embedding", embedding))
    return steps


def _reinitialise(item: nn.Module | nn.Parameter, generator: torch.Generator) -> None:
    """Re-initialise a module's parameters with its own initialiser where it has one, else with matched noise."""
    with torch.no_grad():
        if isinstance(item, nn.Parameter):
            _noise_like(item, generator)
            return
        for module in item.modules():
            if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
                    module.reset_parameters()
            else:
                for parameter in module.parameters(recurse=False):
                    _noise_like(parameter, generator)


def _noise_like(parameter: torch.Tensor, generator: torch.Generator) -> None:
    std = float(parameter.float().std()) if parameter.numel() > 1 else 0.02
    noise = torch.randn(parameter.shape, generator=generator) * (std if std > 0 else 0.02)
    parameter.copy_(noise.to(parameter.device, parameter.dtype))


def cascading_randomization(
    model: nn.Module,
    explain: Explain,
    *,
    seed: int = 0,
    threshold: float = SURVIVAL_THRESHOLD,
) -> RandomizationResult:
    """Run ``explain`` on copies of ``model`` randomised from the top down and compare with the original map.

    Args:
        model: the trained model (never modified: a deep copy is randomised).
        explain: returns the map for a model; called once on ``model`` and once per step on the copy.
        seed: for the re-initialisation.
        threshold: the final correlation at or above which the map is flagged.
    """
    original = explain(model).detach().float().cpu().numpy()
    randomised = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    steps = []
    for name, items in cascade(randomised):
        for item in items:
            _reinitialise(item, generator)
        current = explain(randomised).detach().float().cpu().numpy()
        steps.append(RandomizationStep(name, rank_correlation(original, current)))
    return RandomizationResult(tuple(steps), threshold)
