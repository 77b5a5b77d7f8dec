"""Token readout: the class logits the head would give from one patch token alone.

* Pooled heads (``pool="attn"`` or ``"mean"``): the readout of token ``j`` is
  ``head(norm(x_j))``, the logits if the pooling put all its weight on ``j``.
  The model's logits are the pooling-weighted mean of the readouts, and
  Grad-CAM at the final ``norm`` is exactly the readout of the explained class
  (divided by the token count, ReLU applied).
* cls-token heads: the logits when the cls token attends to ``j`` only (in
  every head) in the last block: the cls token's input, plus the attention's
  output for a one-hot attention on ``j``, then the block's MLP, the final
  norm and the head.

Either is computed for all tokens at once. Training the demo model with a
readout loss keeps its evidence where the lesion is: tokens whose patch holds
no lesion voxel are taught to read as "no evidence" (equal logits). A model
whose tokens outside the lesion carry no evidence decides from the lesion, and
its heatmap can be checked against the lesion mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_vitcam.models.architectures.vit3d import Block, ViT3D


class ReadoutCapture:
    """Context manager that records, on each forward pass, what :meth:`logits` needs.

    For a cls-token ViT the last block's input, for a pooled head the final
    norm's output.
    """

    def __init__(self, model: ViT3D):
        self.model = model
        self.pooled = model.cls_token is None
        self.value: torch.Tensor | None = None
        #: The attention pooling's weights (B, N) of the last forward pass, for ``pool="attn"``.
        self.pooling: torch.Tensor | None = None
        self._handles: list = []

    def __enter__(self) -> ReadoutCapture:
        if self.pooled:
            self._handles.append(self.model.norm.register_forward_hook(lambda m, i, output: self._keep(output)))
        else:
            self._handles.append(
                self.model.blocks[-1].register_forward_pre_hook(lambda m, inputs: self._keep(inputs[0]))
            )
        if self.model.attn_pool is not None:
            self._handles.append(
                self.model.attn_pool.weights.register_forward_hook(
                    lambda m, i, output: setattr(self, "pooling", output)
                )
            )
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.value = None
        self.pooling = None

    def _keep(self, value: torch.Tensor) -> None:
        self.value = value

    def logits(self) -> torch.Tensor:
        """Readout logits (B, N, K) of the last forward pass."""
        if self.value is None:
            raise RuntimeError("no forward pass was recorded")
        if self.pooled:
            return self.model.head(self.value)
        return readout_logits(self.model, self.value)


def readout_logits(model: ViT3D, block_input: torch.Tensor) -> torch.Tensor:
    """Logits (B, N, K) for each patch token read alone by the cls token in the last block.

    ``block_input`` is the last block's input (B, 1 + N, E), cls token first.
    """
    if model.cls_token is None:
        raise ValueError("token readout needs a cls-token ViT (pool='cls')")
    block = model.blocks[-1]
    assert isinstance(block, Block)
    width = block_input.shape[-1]
    cls = block_input[:, :1]
    tokens = block.norm1(block_input[:, 1:])
    qkv = block.attn.qkv
    values = F.linear(tokens, qkv.weight[2 * width :], qkv.bias[2 * width :])
    read = cls + block.attn.proj(values)
    read = read + block.mlp(block.norm2(read))
    return model.head(model.norm(read))


def token_lesion_share(masks: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """Share of each token's patch covered by the lesion: (B, D, H, W) bool -> (B, N), token order of the model."""
    return F.avg_pool3d(masks[:, None].float(), patch_size, patch_size).flatten(1)


def readout_loss(logits: torch.Tensor, neutral: torch.Tensor, top: int = 0) -> torch.Tensor:
    """How far the readouts of the ``neutral`` tokens (B, N bool) are from "no evidence".

    Each token's cost is its readout's cross-entropy against 1/K per class,
    less log K: 0 for a readout that gives every class the same score. The
    loss is the mean cost over the neutral tokens, plus, with ``top > 0``, the
    mean of each volume's ``top`` largest costs: the few most opinionated
    tokens (a distractor that looks like a lesion) are what an attention
    pooling picks up and what a heatmap's maximum lands on, and a plain mean
    over hundreds of tokens hardly sees them.
    """
    k = logits.shape[-1]
    cost = -logits.log_softmax(-1).mean(-1) - torch.log(torch.tensor(float(k)))
    cost = torch.where(neutral, cost, torch.zeros_like(cost))
    count = neutral.sum()
    if count == 0:
        return logits.sum() * 0.0
    loss = cost.sum() / count
    if top > 0:
        loss = loss + cost.topk(min(top, cost.shape[1]), dim=1).values.mean()
    return loss


def pooling_on_lesion_loss(pooling: torch.Tensor, lesion: torch.Tensor, has_lesion: torch.Tensor) -> torch.Tensor:
    """``-log`` of the pooling weight (B, N) that falls on the lesion's tokens (B, N bool), over volumes with a lesion."""
    if not bool(has_lesion.any()):
        return pooling.sum() * 0.0
    on_lesion = (pooling * lesion).sum(1)[has_lesion]
    return -torch.log(on_lesion.clamp(min=1e-6)).mean()
