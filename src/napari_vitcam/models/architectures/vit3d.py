"""The reference 3D Vision Transformer.

A plain pre-norm ViT for volumes, following the method write-up: a Conv3d patch
embedding (kernel = stride = patch size), a cls token, a learned position
embedding, ``depth`` blocks of ``norm1 -> attn -> norm2 -> mlp`` with residuals,
a final norm and a linear head on the cls token (``pool="cls"``, as in the
write-up), on the mean of the patch tokens (``pool="mean"``: no cls token) or
on their attention-weighted mean (``pool="attn"``: no cls token; a learned
score per token, softmax over the tokens).

Module names read well as Grad-CAM targets: ``blocks.3.norm1``, ``blocks.2``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from numbers import Integral, Real

import torch
import torch.nn.functional as F
from torch import nn

from napari_vitcam.core.errors import CheckpointError
from napari_vitcam.core.vocabulary import Triple
from napari_vitcam.models import limits
from napari_vitcam.models.architectures.base import ArchitectureFamily

#: How the head reads the tokens: the cls token, the mean of the patch tokens, or their attention-weighted mean.
POOLS = ("cls", "mean", "attn")


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def as_triple(value: int | tuple[int, ...] | list[int], name: str = "value") -> Triple:
    """``8 -> (8, 8, 8)``; a 3-sequence of ints is returned as a tuple of ints."""
    if _is_int(value):
        return (int(value), int(value), int(value))  # type: ignore[arg-type]
    if not isinstance(value, (tuple, list)) or len(value) != 3 or not all(_is_int(v) for v in value):
        raise ValueError(f"{name} must be an int or 3 ints (depth, height, width), got {value!r}")
    return tuple(int(v) for v in value)  # type: ignore[return-value]


def _check_int(name: str, value, low: int, high: int) -> None:
    if not _is_int(value) or not low <= value <= high:
        raise ValueError(f"{name} must be an int from {low} to {high}, got {value!r}")


def _check_number(name: str, value, low: float, high: float, *, include_low: bool) -> None:
    number_ok = isinstance(value, Real) and not isinstance(value, bool)
    in_range = number_ok and (low <= value if include_low else low < value) and value <= high
    if not in_range:
        bracket = "[" if include_low else "("
        raise ValueError(f"{name} must be a number in {bracket}{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of :class:`ViT3D`. Sizes are (depth, height, width) in voxels."""

    in_channels: int = 1
    img_size: Triple = (64, 64, 64)
    patch_size: Triple = (8, 8, 8)
    width: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 2
    dropout: float = 0.0
    pool: str = "cls"
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        """Check every field's type and range (bounds in :mod:`napari_vitcam.models.limits`) before any allocation."""
        object.__setattr__(self, "img_size", as_triple(self.img_size, "img_size"))
        object.__setattr__(self, "patch_size", as_triple(self.patch_size, "patch_size"))
        for size, patch in zip(self.img_size, self.patch_size, strict=True):
            if patch <= 0 or size < patch:
                raise ValueError(f"patch_size {self.patch_size} must be positive and fit in img_size {self.img_size}")
        if max(self.img_size) > limits.MAX_SIDE:
            raise ValueError(f"img_size {self.img_size} is over {limits.MAX_SIDE} voxels along an axis")
        tokens = self.grid_size[0] * self.grid_size[1] * self.grid_size[2]
        if tokens > limits.MAX_TOKENS:
            raise ValueError(f"img_size / patch_size gives {tokens} tokens, over the bound {limits.MAX_TOKENS}")
        _check_int("in_channels", self.in_channels, 1, limits.MAX_CHANNELS)
        _check_int("width", self.width, 1, limits.MAX_WIDTH)
        _check_int("depth", self.depth, 0, limits.MAX_DEPTH)
        _check_int("heads", self.heads, 1, limits.MAX_HEADS)
        _check_int("num_classes", self.num_classes, 1, limits.MAX_CLASSES)
        _check_number("mlp_ratio", self.mlp_ratio, 0.0, limits.MAX_MLP_RATIO, include_low=False)
        _check_number("dropout", self.dropout, 0.0, 1.0, include_low=True)
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(map(repr, POOLS))}, got {self.pool!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")

    @property
    def grid_size(self) -> Triple:
        return tuple(s // p for s, p in zip(self.img_size, self.patch_size, strict=True))  # type: ignore[return-value]

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("extra")
        data["img_size"] = list(self.img_size)
        data["patch_size"] = list(self.patch_size)
        return data


class PatchEmbed3D(nn.Module):
    """Cuts a volume into patches and embeds each: (B, C, D, H, W) -> (B, N, E).

    Voxels beyond the last whole patch along an axis are not seen by the model.
    """

    def __init__(self, in_channels: int, width: int, img_size: Triple, patch_size: Triple):
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = tuple(s // p for s, p in zip(img_size, patch_size, strict=True))
        self.proj = nn.Conv3d(in_channels, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention.

    Uses torch's fused ``scaled_dot_product_attention`` unless ``expose_probs``
    is set; then the softmax probabilities are computed explicitly and pass
    through the ``probs`` identity module, where a forward hook can read them
    (shape (B, heads, T, T)).
    """

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.scale = (width // heads) ** -0.5
        self.qkv = nn.Linear(width, width * 3)
        self.probs = nn.Identity()
        self.proj = nn.Linear(width, width)
        self.dropout = dropout
        self.expose_probs = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, e = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, e // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        p = self.dropout if self.training else 0.0
        if self.expose_probs:
            weights = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            weights = self.probs(weights)
            out = F.dropout(weights, p, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.proj(out.transpose(1, 2).reshape(b, t, e))


class AttentionPool(nn.Module):
    """Attention pooling: a softmax over the tokens of a learned score, then the weighted mean.

    ``(B, N, E) -> (B, E)``. The weights pass through the ``weights`` identity
    module, where a forward hook can read them (shape (B, N)).
    """

    def __init__(self, width: int):
        super().__init__()
        self.score = nn.Linear(width, 1)
        self.weights = nn.Identity()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        weights = self.weights(self.score(tokens).squeeze(-1).softmax(dim=-1))
        return (weights.unsqueeze(-1) * tokens).sum(dim=1)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT3D(nn.Module):
    """Reference 3D ViT classifier. ``forward`` returns logits (B, K).

    With ``pool="cls"`` a cls token is prepended and the head reads it; with
    ``pool="mean"`` there is no prefix token and the head reads the mean of the
    normalised patch tokens; with ``pool="attn"`` their attention-weighted mean.
    With either pooled head a class score is a weighted sum of per-token scores
    ``head(norm(token))``, and Grad-CAM at the final ``norm`` gives exactly
    each token's score (the original CAM).
    """

    def __init__(self, config: ViTConfig | None = None, **kwargs):
        super().__init__()
        config = config if config is not None else ViTConfig(**kwargs)
        self.config = config
        self.patch_embed = PatchEmbed3D(config.in_channels, config.width, config.img_size, config.patch_size)
        n_tokens = 1
        for g in config.grid_size:
            n_tokens *= g
        prefix = 1 if config.pool == "cls" else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width)) if prefix else None
        self.pos_embed = nn.Parameter(torch.zeros(1, prefix + n_tokens, config.width))
        self.pos_drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(config.width, config.heads, config.mlp_ratio, config.dropout) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.width)
        self.attn_pool = AttentionPool(config.width) if config.pool == "attn" else None
        self.head = nn.Linear(config.width, config.num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    @property
    def img_size(self) -> Triple:
        return self.config.img_size

    @property
    def patch_size(self) -> Triple:
        return self.config.patch_size

    def set_expose_attention(self, enabled: bool) -> None:
        """Make every block's attention pass its probabilities through ``attn.probs``."""
        for module in self.modules():
            if isinstance(module, Attention):
                module.expose_probs = enabled

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        x = self.pos_drop(tokens + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.forward_features(x)
        if self.cls_token is not None:
            pooled = features[:, 0]
        elif self.attn_pool is not None:
            pooled = self.attn_pool(features)
        else:
            pooled = features.mean(dim=1)
        return self.head(pooled)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ReferenceViT(ArchitectureFamily):
    """``"ViT3D"``: the reference ViT; its arguments are :class:`ViTConfig` fields."""

    NAME = "ViT3D"
    form = "'ViT3D'"

    def matches(self, name: str) -> bool:
        return name == self.NAME

    def build(self, name: str, arguments: dict) -> nn.Module:
        try:
            return ViT3D(ViTConfig(**arguments))
        except (TypeError, ValueError) as error:
            raise CheckpointError(
                f"cannot build ViT3D from its arguments ({error}): fix the spec's arguments"
            ) from None

    def describe(self, model: nn.Module) -> tuple[str, dict] | None:
        if isinstance(model, ViT3D):
            return self.NAME, model.config.to_dict()
        return None
