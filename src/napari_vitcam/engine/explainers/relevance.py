"""Gradient-weighted attention relevance: Chefer, Gur & Wolf 2021, "Generic Attention-model
Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers" (ICCV; arXiv:2103.15679)."""

from __future__ import annotations

import torch

from napari_vitcam.engine.explainers.base import AttentionExplainer, AttentionInputs


class AttentionRelevance(AttentionExplainer):
    """Relevance propagated through the attention, each head weighted by the class score's gradient.

    Chefer et al.'s rule for self-attention, over blocks l = 1..L with ``R = I`` to start::

        Ā_l = mean_h( ReLU(dy^c/dA_l ⊙ A_l) )
        R  <- R + Ā_l R

    so ``R = (I + Ā_L) ... (I + Ā_1)``. Only the row(s) the head reads are
    needed (``r``: the cls token, or the mean of the tokens a pooled head
    reads), so the engine computes ``r^T R`` as vector-matrix products from the
    last block down, ``v <- v + v Ā_l``: O(L T^2), never the T x T chain. The map
    is ``r^T R`` at the grid tokens (the self-relevance of the read token
    included where it is a grid token). ``y^c`` is the class logit.
    """

    name = "relevance"
    label = "Attention relevance (Chefer)"
    paper = "Chefer, Gur & Wolf 2021, Generic Attention-model Explainability for Interpreting Transformers"
    needs_gradients = True

    def token_map(self, inputs: AttentionInputs) -> torch.Tensor:
        if inputs.gradients is None:
            raise ValueError("attention relevance needs the attention gradients")
        v = inputs.readout.float()
        for attention, gradient in zip(reversed(inputs.attentions), reversed(inputs.gradients), strict=False):
            weighted = (gradient.float() * attention.float()).relu_().mean(dim=1)
            v = v + torch.einsum("bt,bts->bs", v, weighted)
        return v[:, inputs.prefix :]
