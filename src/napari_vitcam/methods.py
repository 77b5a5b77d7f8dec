"""CAM methods: each is one small function registered in :data:`METHODS`.

A method takes the target layer's activations ``A`` and the gradients of the
class score ``dy/dA``, both (B, N, E) (N tokens on the grid, E channels), and
returns the raw map (B, N) in score units. Adding a method is adding one
function and one line to the table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

CamFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def gradcam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM: ``ReLU(sum_k alpha_k A^k)`` with ``alpha_k`` the token-mean gradient."""
    alpha = gradients.mean(dim=1)
    return torch.einsum("bne,be->bn", activations, alpha).relu_()


def hirescam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """HiResCAM: ``ReLU(sum_k dy/dA^k * A^k)`` per token, no averaging of gradients."""
    return torch.einsum("bne,bne->bn", activations, gradients).relu_()


def layercam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """LayerCAM: ``ReLU(sum_k ReLU(dy/dA^k) * A^k)`` per token."""
    return torch.einsum("bne,bne->bn", activations, gradients.relu()).relu_()


class MethodInfo(NamedTuple):
    label: str
    function: CamFunction


METHODS: dict[str, MethodInfo] = {
    "gradcam": MethodInfo("Grad-CAM", gradcam),
    "hirescam": MethodInfo("HiResCAM", hirescam),
    "layercam": MethodInfo("LayerCAM", layercam),
}


def get_method(name: str) -> MethodInfo:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown CAM method {name!r}: choose one of {', '.join(METHODS)}"
        ) from None
