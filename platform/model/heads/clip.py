"""Clip-level heads on the pooled vector: action, sentiment, moderation, quality."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from veilfed.data import schema
from veilfed.model.heads.base import Head, HeadInput
from veilfed.model.registry import HEADS


class _PooledHead(Head):
    outputs = 1

    def __init__(self, dim: int, hidden: int | None = None, **kw: object) -> None:
        super().__init__(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden or dim), nn.GELU(), nn.Linear(hidden or dim, self.outputs)
        )

    def forward(self, inp: HeadInput) -> Tensor:
        return self.mlp(inp.view.pooled)


@HEADS.register("action")
class ActionHead(_PooledHead):
    """Logits over ``ACTIONS``; cross-entropy."""

    task, outputs = "action", len(schema.ACTIONS)

    def loss(self, output: Tensor, targets: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(output, targets["action"].clamp(min=0), reduction="none")


@HEADS.register("sentiment")
class SentimentHead(_PooledHead):
    """Logits over ``SENTIMENTS``; cross-entropy."""

    task, outputs = "sentiment", len(schema.SENTIMENTS)

    def loss(self, output: Tensor, targets: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(output, targets["sentiment"].clamp(min=0), reduction="none")


@HEADS.register("moderation")
class ModerationHead(_PooledHead):
    """One logit per clip (> 0 = flagged); binary cross-entropy."""

    task = "moderation"

    def forward(self, inp: HeadInput) -> Tensor:
        return super().forward(inp)[:, 0]

    def loss(self, output: Tensor, targets: dict[str, Tensor]) -> Tensor:
        return F.binary_cross_entropy_with_logits(
            output, targets["moderation"].float(), reduction="none"
        )


@HEADS.register("quality")
class QualityHead(_PooledHead):
    """Clean-ness score in [0, 1] (sigmoid); squared error times 10 (the error of a [0, 1] score is
    an order of magnitude below the other heads' losses, which would otherwise drown it)."""

    task = "quality"
    requires = ("video",)

    def forward(self, inp: HeadInput) -> Tensor:
        return super().forward(inp)[:, 0].sigmoid()

    def loss(self, output: Tensor, targets: dict[str, Tensor]) -> Tensor:
        return (output - targets["quality"].float()).pow(2) * 10.0
