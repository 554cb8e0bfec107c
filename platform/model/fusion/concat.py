"""Feature-level fusion: concatenate pooled vectors (zeroed when missing) plus the presence bits."""

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
    video_grid,
)
from veilfed.model.registry import FUSIONS


@FUSIONS.register("concat")
class ConcatFusion(Fusion):
    def __init__(self, modalities: tuple[str, ...], dim: int, hidden: int | None = None) -> None:
        super().__init__(modalities, dim)
        m = len(modalities)
        self.mlp = nn.Sequential(
            nn.Linear(dim * m + m, hidden or dim), nn.GELU(), nn.Linear(hidden or dim, dim)
        )

    def prunable_widths(self) -> dict[str, list[nn.Module]]:
        return {"hidden": [self.mlp[0]]}

    def forward(self, encoded: dict[str, Encoded], present: dict[str, Tensor]) -> FusionOutput:
        bits = presence(present, self.modalities)
        feats = [encoded[m].pooled * bits[:, i : i + 1] for i, m in enumerate(self.modalities)]
        pooled = self.mlp(torch.cat([*feats, bits], dim=1))
        tokens, mask, _ = joint_tokens(encoded, present, self.modalities)
        return FusionOutput([View(pooled, tokens, mask, video_grid(encoded, present))])
