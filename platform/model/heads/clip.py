"""Clip-level heads on the pooled vector: classification, binary flag, multi-label, regression."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from veilfed.model.heads.base import Head, HeadInput
from veilfed.model.registry import HEADS
from veilfed.tasks import TaskSpec


class _PooledHead(Head):
    clip_level = True

    def __init__(self, dim: int, spec: TaskSpec, hidden: int | None = None, **_: object) -> None:
        super().__init__(dim, spec)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden or dim), nn.GELU(), nn.Linear(hidden or dim, self.outputs())
        )

    def outputs(self) -> int:
        return 1

    def forward(self, inp: HeadInput) -> Tensor:
        return self.mlp(inp.view.pooled)


@HEADS.register("classification")
class ClassificationHead(_PooledHead):
    """Logits over the task's classes [B, C]; cross-entropy."""

    def outputs(self) -> int:
        return len(self.spec.classes)

    def loss(self, output: Tensor, targets: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(output, self.target(targets).clamp(min=0), reduction="none")


@HEADS.register("binary")
class BinaryHead(_PooledHead):
    """One logit per clip [B] (> 0 = flagged); binary cross-entropy."""

    def forward(self, inp: HeadInput) -> Tensor:
        return super().forward(inp)[:, 0]

    def loss(self, output: Tensor, targets: dict[str, Tensor]) -> Tensor:
        return F.binary_cross_entropy_with_logits(
            output, self.target(targets).float(), reduction="none"
        )


@HEADS.register("multilabel")
class MultilabelHead(_PooledHead):
    """One logit per class [B, C] (> 0 = the label applies); binary cross-entropy per class."""

    def outputs(self) -> int:
        return len(self.spec.classes)

    def loss(self, output: Tensor, targets: dict[str, Tensor]) -> Tensor:
        bce = F.binary_cross_entropy_with_logits(
            output, self.target(targets).float(), reduction="none"
        )
        return bce.mean(dim=1)


@HEADS.register("regression")
class RegressionHead(_PooledHead):
    """A score in the task's ``range`` [B] (a scaled sigmoid); squared error on the [0, 1] scale
    times 10 (a [0, 1] error is an order of magnitude below the other heads' losses, which would
    otherwise drown it)."""

    def forward(self, inp: HeadInput) -> Tensor:
        lo, hi = self.spec.options["range"]
        return lo + (hi - lo) * super().forward(inp)[:, 0].sigmoid()

    def loss(self, output: Tensor, targets: dict[str, Tensor]) -> Tensor:
        lo, hi = self.spec.options["range"]
        err = (output - self.target(targets).float()) / (hi - lo)
        return err.pow(2) * 10.0
