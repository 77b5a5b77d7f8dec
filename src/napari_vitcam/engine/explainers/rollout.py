"""Attention rollout: Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers" (ACL;
arXiv:2005.00928)."""

from __future__ import annotations

import torch

from napari_vitcam.engine.explainers.base import AttentionExplainer, AttentionInputs


class AttentionRollout(AttentionExplainer):
    """How much each token flows into what the head reads, through every block's attention and residual.

    With ``Ā_l = mean_h A_l`` the head-averaged attention of block l, the
    residual taken into account as ``0.5 Ā_l + 0.5 I`` (rows still sum to 1),
    and ``r`` what the head reads at the last block's output (the cls token,
    or the mean of the tokens a pooled head reads)::

        rollout = r^T (0.5 Ā_L + 0.5 I) (0.5 Ā_{L-1} + 0.5 I) ... (0.5 Ā_1 + 0.5 I)

    computed as vector-matrix products from the last block down: O(L T^2), never
    the T x T product of the matrices. The map is the rollout's grid tokens.
    Class-agnostic.
    """

    name = "rollout"
    label = "Attention rollout"
    paper = "Abnar & Zuidema 2020, Quantifying Attention Flow in Transformers"

    def token_map(self, inputs: AttentionInputs) -> torch.Tensor:
        v = inputs.readout.float()
        for attention in reversed(inputs.attentions):
            mean = attention.float().mean(dim=1)
            v = 0.5 * torch.einsum("bt,bts->bs", v, mean) + 0.5 * v
        return v[:, inputs.prefix :]
