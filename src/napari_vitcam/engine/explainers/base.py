"""What an explainer is, and what it needs from a model.

Every explainer turns a model's behaviour on one input into a map over the
token grid, (B, N) with N = d*h*w tokens in row-major order, in units of its
own. It declares what it needs through its base class, and the engine
(:func:`napari_vitcam.engine.cam.explain_tokens`) gathers exactly that:

* :class:`LayerExplainer`: one target layer's activations and the class
  score's gradients there (the CAM family: Grad-CAM, HiResCAM, LayerCAM, ...),
  and the score itself for methods that weight by it (Grad-CAM++ variants).
* :class:`AttentionExplainer`: every block's attention probabilities and,
  for gradient-weighted methods, their gradients (attention rollout,
  gradient-weighted relevance).
* :class:`PerturbationExplainer`: only forward passes on perturbed inputs
  (occlusion, Score-CAM).

The base classes are small on purpose; see ``docs/architecture.md`` for how to
add one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from napari_vitcam.engine.token_grid import TokenGrid


class Explainer(ABC):
    """An explanation method.

    Attributes:
        name: the key in the registry, the CLI's ``--method`` value.
        label: what a person reads (the widget's list, layer names).
        paper: the reference for the method, author year and title.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    paper: ClassVar[str]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


Scorer = Callable[[torch.Tensor], torch.Tensor]
"""Maps a batch of inputs (B, C, D, H, W) to each one's class score (B,), without gradients."""


@dataclass(frozen=True)
class LayerInputs:
    """One target layer seen by a :class:`LayerExplainer`.

    Args:
        activations: (B, N, E) the layer's output at the N grid tokens, E channels.
        gradients: (B, N, E) the gradient of each sample's class score there
            (zeros for an explainer with ``needs_gradients = False``).
        scores: (B,) each sample's class score (the logit explained).
        x: the (B, C, D, H, W) input, for explainers with ``needs_forward``.
        scorers: one :data:`Scorer` per sample (its own class), for explainers
            with ``needs_forward``.
        grid: where the N tokens lie in the input, for explainers with ``needs_forward``.
        batch_size: how many perturbed inputs to score at once.
    """

    activations: torch.Tensor
    gradients: torch.Tensor
    scores: torch.Tensor
    x: torch.Tensor | None = None
    scorers: list[Scorer] | None = None
    grid: TokenGrid | None = None
    batch_size: int = 16


class LayerExplainer(Explainer):
    """A method computed from one layer's activations and the class score's gradients there.

    ``needs_gradients = False``: the engine skips the backward pass (EigenCAM,
    Score-CAM). ``needs_forward = True``: the engine passes the input, one
    scorer per sample and the grid, to run the model on masked inputs (Score-CAM).
    """

    needs_gradients: ClassVar[bool] = True
    needs_forward: ClassVar[bool] = False

    @abstractmethod
    def token_map(self, inputs: LayerInputs) -> torch.Tensor:
        """The (B, N) map, in class-score units, ReLU applied.

        Args:
            inputs: the layer's activations, gradients and the scores.
        """


@dataclass(frozen=True)
class AttentionInputs:
    """Every block's attention, for an :class:`AttentionExplainer`.

    Args:
        attentions: one (B, heads, T, T) tensor per block, in forward order;
            each row sums to 1 over its keys.
        gradients: the class score's gradient of each, or None when the
            explainer did not ask for them.
        prefix: how many tokens come before the grid's tokens (cls, registers).
        readout: (B, T) how much the model's head reads each token at the last
            block's output: one-hot on the cls token, or uniform over the
            patch tokens for a mean-pooled head.
        grid: where the T - prefix grid tokens lie.
    """

    attentions: list[torch.Tensor]
    gradients: list[torch.Tensor] | None
    prefix: int
    readout: torch.Tensor
    grid: TokenGrid


class AttentionExplainer(Explainer):
    """A method computed from every block's attention probabilities (and their gradients)."""

    needs_gradients: ClassVar[bool] = False

    @abstractmethod
    def token_map(self, inputs: AttentionInputs) -> torch.Tensor:
        """The (B, N) map over the grid tokens (prefix tokens dropped).

        Args:
            inputs: every block's attention and what the head reads.
        """


@dataclass(frozen=True)
class PerturbationInputs:
    """What a :class:`PerturbationExplainer` may run.

    Args:
        x: the (1, C, D, H, W) input explained.
        score: runs the model on a batch of inputs and returns the explained
            class's score of each.
        grid: the token grid over ``x``; a map is one value per cell.
        batch_size: how many perturbed inputs to score at once.
    """

    x: torch.Tensor
    score: Scorer
    grid: TokenGrid
    batch_size: int = 16


class PerturbationExplainer(Explainer):
    """A method that only runs the model forward, on perturbed copies of the input."""

    @abstractmethod
    def token_map(self, inputs: PerturbationInputs) -> torch.Tensor:
        """The (1, N) map over the grid's cells.

        Args:
            inputs: the input, the scoring function and the grid.
        """
