"""Joint self-attention over every modality's tokens, with modality embeddings and a CLS token.

Missing modalities and PAD tokens are masked out of the keys; the last block's attention
[B, 1 + L, 1 + L] is returned under ``self`` for visualization.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from veilfed.model.encoders.base import Encoded
from veilfed.model.fusion.base import Fusion, FusionOutput, View, joint_tokens, video_grid
from veilfed.model.layers import Block
from veilfed.model.registry import FUSIONS


@FUSIONS.register("transformer")
class TransformerFusion(Fusion):
    def __init__(
        self, modalities: tuple[str, ...], dim: int, layers: int = 1, heads: int = 4
    ) -> None:
        super().__init__(modalities, dim)
        self.modality_embed = nn.Embedding(len(modalities) + 1, dim)  # id 0 = CLS
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, encoded: dict[str, Encoded], present: dict[str, Tensor]) -> FusionOutput:
        tokens, mask, ids = joint_tokens(encoded, present, self.modalities)
        b = tokens.shape[0]
        zeros = torch.zeros(b, 1, dtype=torch.long, device=tokens.device)
        embeds = self.modality_embed(torch.cat([zeros, ids + 1], dim=1))
        x = torch.cat([torch.zeros_like(tokens[:, :1]), tokens], dim=1) + embeds
        mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        attention = {"self": self.blocks[-1].last_attention} if self.blocks else {}
        return FusionOutput(
            [View(x[:, 0], x[:, 1:], mask[:, 1:], video_grid(encoded, present))],
            attention=attention,
        )
