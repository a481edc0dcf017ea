"""Backbone wrapper and the component attention head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Backbone(nn.Module):
    """A timm feature extractor that fuses the requested stride levels into one map at the finest stride.

    Args:
        name: timm model name.
        strides: feature strides to use, e.g. (16, 32).
        out_dim: channels of the fused map.
        pretrained: load timm's pretrained weights (network needed).
    """

    def __init__(self, name: str, strides: Sequence[int], out_dim: int, pretrained: bool = False) -> None:
        super().__init__()
        import timm

        try:
            probe = timm.create_model(name, pretrained=False, features_only=True)
        except Exception as err:  # unknown name, or a model without features_only
            raise ValueError(f"timm backbone '{name}' cannot be created with features_only=True: {err}") from err
        reductions = probe.feature_info.reduction()
        missing = [s for s in strides if s not in reductions]
        if missing:
            raise ValueError(f"backbone '{name}' has feature strides {reductions}; requested {list(strides)}")
        out_indices = tuple(reductions.index(s) for s in strides)
        if pretrained:
            try:
                self.body = timm.create_model(name, pretrained=True, features_only=True, out_indices=out_indices)
            except Exception as err:
                raise RuntimeError(f"could not download pretrained weights for '{name}' (offline?). Use "
                                   f"pretrained_backbone=False or make the Hub reachable: {err}") from err
        else:
            self.body = timm.create_model(name, pretrained=False, features_only=True, out_indices=out_indices)
        channels = self.body.feature_info.channels()
        self.strides = tuple(strides)
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_dim, 1) for c in channels)
        self.fuse = nn.Sequential(nn.Conv2d(out_dim, out_dim, 3, padding=1), nn.BatchNorm2d(out_dim), nn.GELU())
        cfg = self.body.pretrained_cfg
        self.register_buffer("pixel_mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) RGB in [0, 1] -> (B, D, S / min(strides), S / min(strides)) fused features."""
        x = (images - self.pixel_mean) / self.pixel_std
        feats = self.body(x)
        target = feats[0].shape[-2:]
        fused = 0
        for lateral, f in zip(self.lateral, feats, strict=True):
            y = lateral(f)
            if y.shape[-2:] != target:
                y = F.interpolate(y, size=target, mode="bilinear", align_corners=False)
            fused = fused + y
        return self.fuse(fused)


def sincos_position_embedding(h: int, w: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """2D sine-cosine position embedding: (h * w, dim), rows in raster order."""
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    out_y = ys.reshape(-1, 1) * omega
    out_x = xs.reshape(-1, 1) * omega
    emb = torch.cat([out_x.sin(), out_x.cos(), out_y.sin(), out_y.cos()], dim=1)
    return emb.to(dtype)


class DecoderLayer(nn.Module):
    """Pre-norm layer: query tokens cross-attend to the feature map, then self-attend, then an MLP."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.cross = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
        """Tokens (B, T, D), memory (B, HW, D), pos (HW, D) -> tokens, cross-attention weights (B, T, HW)."""
        kv = self.norm_kv(memory)
        q = self.norm_q(tokens)
        attended, weights = self.cross(q, kv + pos, kv, need_weights=True, average_attn_weights=True)
        tokens = tokens + attended
        q = self.norm_self(tokens)
        tokens = tokens + self.self_attn(q, q, q, need_weights=False)[0]
        tokens = tokens + self.mlp(self.norm_mlp(tokens))
        return tokens, weights


class ComponentAttentionHead(nn.Module):
    """Learned query tokens (one per facial component plus global tokens) cross-attending to backbone features.

    Args:
        n_tokens: number of query tokens T.
        dim: token width D.
        heads: attention heads.
        layers: decoder layers.
        dropout: dropout probability.
    """

    def __init__(self, n_tokens: int, dim: int, heads: int, layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n_tokens, dim) * 0.02)
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.dim = dim

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend to a feature map.

        Args:
            features: (B, D, h, w) backbone features.

        Returns:
            tokens (B, T, D) and the last layer's cross-attention maps (B, T, h, w), each map summing to 1.
        """
        b, d, h, w = features.shape
        memory = features.flatten(2).transpose(1, 2)
        pos = sincos_position_embedding(h, w, d, features.device, features.dtype)
        tokens = self.queries.unsqueeze(0).expand(b, -1, -1)
        weights = None
        for layer in self.layers:
            tokens, weights = layer(tokens, memory, pos)
        return self.norm(tokens), weights.reshape(b, -1, h, w)
