"""Model-level fusion: one head set per modality, predictions combined by weighted voting.

Each modality gets its own view (its pooled vector and its own tokens); the model builds a separate
head set per view and averages their outputs with per-sample weights: a learned function of which
modalities are present, renormalised over the present ones.
"""

from __future__ import annotations

from torch import Tensor, nn

from veilfed.model.encoders.base import Encoded
from veilfed.model.fusion.base import (
    Fusion,
    FusionOutput,
    View,
    masked_softmax,
    presence,
    token_mask,
    video_grid,
)
from veilfed.model.registry import FUSIONS


@FUSIONS.register("vote")
class VoteFusion(Fusion):
    num_views_per_modality = True

    def __init__(self, modalities: tuple[str, ...], dim: int) -> None:
        super().__init__(modalities, dim)
        self.adapt = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(dim, dim), nn.GELU()) for m in modalities}
        )
        self.vote = nn.Linear(len(modalities), len(modalities))

    def forward(self, encoded: dict[str, Encoded], present: dict[str, Tensor]) -> FusionOutput:
        bits = presence(present, self.modalities)
        views = [
            View(
                self.adapt[m](encoded[m].pooled),
                encoded[m].tokens,
                token_mask(encoded[m], present[m]),
                video_grid(encoded, present),
            )
            for m in self.modalities
        ]
        weights = masked_softmax(self.vote(bits), bits)
        return FusionOutput(views, weights, attention={"modality_weights": weights})
