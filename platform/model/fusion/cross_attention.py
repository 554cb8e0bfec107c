"""Cross-modal attention: audio and text tokens query the video tokens.

The attention maps ([B, L_query, L_video], video tokens in (t, y, x) order) are returned under
``cross/<modality>`` for visualization.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from veilfed.model.encoders.base import Encoded
from veilfed.model.fusion.base import (
    Fusion,
    FusionOutput,
    View,
    joint_tokens,
    presence,
    token_mask,
    video_grid,
)
from veilfed.model.layers import Attention, masked_mean
from veilfed.model.registry import FUSIONS


@FUSIONS.register("cross_attention")
class CrossAttentionFusion(Fusion):
    requires = ("video",)

    def __init__(self, modalities: tuple[str, ...], dim: int, heads: int = 4) -> None:
        super().__init__(modalities, dim)
        self.queries = tuple(m for m in modalities if m != "video")
        self.norm_q = nn.ModuleDict({m: nn.LayerNorm(dim) for m in self.queries})
        self.attn = nn.ModuleDict({m: Attention(dim, heads) for m in self.queries})
        self.norm_kv = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, encoded: dict[str, Encoded], present: dict[str, Tensor]) -> FusionOutput:
        video = encoded["video"]
        kv = self.norm_kv(video.tokens)
        video_mask = token_mask(video, present["video"])
        pooled_parts = {"video": video.pooled}
        attention: dict[str, Tensor] = {}
        for m in self.queries:
            q = encoded[m].tokens
            attended, weights = self.attn[m](self.norm_q[m](q), kv, video_mask)
            pooled_parts[m] = masked_mean(q + attended, token_mask(encoded[m], present[m]))
            attention[f"cross/{m}"] = weights
        bits = presence(present, self.modalities)
        stacked = torch.stack([pooled_parts[m] for m in self.modalities], dim=1)
        avg = (stacked * bits.unsqueeze(-1)).sum(1) / bits.sum(1, keepdim=True).clamp(min=1.0)
        tokens, mask, _ = joint_tokens(encoded, present, self.modalities)
        grid = video_grid(encoded, present)
        return FusionOutput([View(self.out(avg), tokens, mask, grid)], attention=attention)
