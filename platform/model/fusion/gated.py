"""Gated fusion: a learned gate gives each sample its own modality weights (missing ones get 0)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from veilfed.model.encoders.base import Encoded
from veilfed.model.fusion.base import (
    Fusion,
    FusionOutput,
    View,
    joint_tokens,
    masked_softmax,
    presence,
    video_grid,
)
from veilfed.model.registry import FUSIONS


@FUSIONS.register("gated")
class GatedFusion(Fusion):
    def __init__(self, modalities: tuple[str, ...], dim: int) -> None:
        super().__init__(modalities, dim)
        m = len(modalities)
        self.proj = nn.ModuleDict({k: nn.Linear(dim, dim) for k in modalities})
        self.gate = nn.Linear(dim * m + m, m)
        self.act = nn.GELU()

    def forward(self, encoded: dict[str, Encoded], present: dict[str, Tensor]) -> FusionOutput:
        bits = presence(present, self.modalities)
        feats = [encoded[m].pooled * bits[:, i : i + 1] for i, m in enumerate(self.modalities)]
        weights = masked_softmax(self.gate(torch.cat([*feats, bits], dim=1)), bits)
        projected = torch.stack(
            [self.act(self.proj[m](f)) for m, f in zip(self.modalities, feats, strict=True)], 1
        )
        pooled = (weights.unsqueeze(-1) * projected).sum(dim=1)
        tokens, mask, _ = joint_tokens(encoded, present, self.modalities)
        return FusionOutput(
            [View(pooled, tokens, mask, video_grid(encoded, present))],
            attention={"modality_weights": weights},
        )
