"""Opacus-friendly building blocks: every parameter lives in a Linear, Conv, GroupNorm, LayerNorm or
Embedding (layers with per-sample gradient samplers), and batch is dim 0 everywhere.

Attention is written from ``nn.Linear`` so its weights can be returned for visualization and so
Opacus (hooks and ghost clipping) handles it without ``DPMultiheadAttention``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head attention; ``forward`` returns the output and the head-averaged weights."""

    def __init__(self, dim: int, heads: int = 4, kv_dim: int | None = None) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} not divisible by heads {heads}")
        kv_dim = kv_dim or dim
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim, 2 * dim)  # fused: fewer tensors for Opacus to clip per step
        self.out = nn.Linear(dim, dim)

    def forward(
        self,
        query: Tensor,
        context: Tensor,
        key_mask: Tensor | None = None,
        causal: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """``key_mask`` [B, Lk]: True for keys that may be attended; rows with none attend none."""
        b, lq, d = query.shape
        lk = context.shape[1]
        h = self.heads
        q = self.q(query).view(b, lq, h, d // h).transpose(1, 2)
        k, v = self.kv(context).view(b, lk, 2, h, d // h).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / (d // h) ** 0.5
        allowed = torch.ones(b, 1, lq, lk, dtype=torch.bool, device=query.device)
        if key_mask is not None:
            allowed = allowed & key_mask[:, None, None, :]
        if causal:
            allowed = allowed & torch.ones(lq, lk, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # fully masked rows -> 0
        out = (weights @ v).transpose(1, 2).reshape(b, lq, d)
        return self.out(out), weights.mean(dim=1)


class Block(nn.Module):
    """Pre-norm transformer block: (causal) self-attention, optional cross-attention, MLP."""

    def __init__(self, dim: int, heads: int = 4, cross: bool = False, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.cross = Attention(dim, heads) if cross else None
        self.norm_c = nn.LayerNorm(dim) if cross else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim)
        )
        self.last_attention: Tensor | None = None

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        causal: bool = False,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
    ) -> Tensor:
        y = self.norm1(x)
        a, self.last_attention = self.attn(y, y, mask, causal=causal)
        x = x + a
        if self.cross is not None and memory is not None:
            c, self.last_attention = self.cross(self.norm_c(x), memory, memory_mask)
            x = x + c
        return x + self.mlp(self.norm2(x))


def masked_mean(tokens: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over dim 1 of ``tokens`` [B, L, D] where ``mask`` [B, L] is True; 0 where none is."""
    if mask is None:
        return tokens.mean(dim=1)
    m = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def positions(batch: int, length: int, device: torch.device) -> Tensor:
    """Position ids [B, L] (batch-first so Opacus' Embedding sampler sees the batch dim)."""
    return torch.arange(length, device=device).unsqueeze(0).repeat(batch, 1)


def flat_apply(layer: nn.Module, x: Tensor) -> Tensor:
    """Apply a token-wise ``layer`` to [B, ..., D] as [B, L, D]: Opacus ghost clipping's Linear
    norm sampler only takes 2-D or 3-D inputs."""
    y = layer(x.reshape(x.shape[0], -1, x.shape[-1]))
    return y.reshape(*x.shape[:-1], y.shape[-1])
