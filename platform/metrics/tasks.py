"""Meters of the clip-level tasks: classification, moderation, quality, caption, QA, summary.

See :mod:`veilfed.metrics.meter` for what a meter keeps and computes.
"""

from __future__ import annotations

import math

import torch

from veilfed.data.schema import ACTIONS, ANSWERS, SENTIMENTS
from veilfed.data.text import BOS, EOS, PAD
from veilfed.errors import UsageError
from veilfed.metrics import functional as M
from veilfed.metrics.meter import (
    TASK_METRICS,
    Resampler,
    TaskMetric,
    better,
    compute_task_metrics,
    finite,
    flat_scalar,
)

__all__ = ["TASK_METRICS", "TaskMetric", "compute_task_metrics"]


class _Classification(TaskMetric):
    num_classes = 0
    primary = "accuracy"
    higher_is_better = better("accuracy", "precision", "recall", "f1")

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        if output.dim() != 2 or output.shape[1] != self.num_classes:
            raise UsageError(
                f"metrics for task {self.task!r}: expected logits "
                f"[B, {self.num_classes}], got {list(output.shape)}"
            )
        self._keep(pred=output.argmax(-1), target=targets[self.target_keys[0]].long())

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        return M.classification(parts["pred"], parts["target"], self.num_classes)


@TASK_METRICS.register("action")
class ActionMetric(_Classification):
    task, target_keys, num_classes = "action", ("action",), len(ACTIONS)


@TASK_METRICS.register("sentiment")
class SentimentMetric(_Classification):
    task, target_keys, num_classes = "sentiment", ("sentiment",), len(SENTIMENTS)


@TASK_METRICS.register("moderation")
class ModerationMetric(TaskMetric):
    """Binary: one logit per clip (``> 0`` = flagged); macro over {ok, flagged}."""

    task, target_keys = "moderation", ("moderation",)
    primary = "f1"
    higher_is_better = better("accuracy", "precision", "recall", "f1")

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        self._keep(
            pred=(flat_scalar(output, self.task) > 0).long(),
            target=(targets["moderation"] > 0.5).long(),
        )

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        return M.classification(parts["pred"], parts["target"], 2)


@TASK_METRICS.register("quality")
class QualityMetric(TaskMetric):
    """Regression of the clean-ness score in [0, 1]."""

    task, target_keys = "quality", ("quality",)
    primary = "spearman"
    higher_is_better = better("spearman", lower=("mae",))

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        self._keep(pred=flat_scalar(output, self.task).float(), target=targets["quality"].float())

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        return M.regression(parts["pred"], parts["target"])


@TASK_METRICS.register("caption")
class CaptionMetric(TaskMetric):
    """Token F1 and BLEU-4 of predicted ids (argmax of logits) against the reference caption.

    The tokenizer's PAD/BOS/EOS never count and tokens after EOS are dropped.
    """

    task, target_keys = "caption", ("caption",)
    primary = "token_f1"
    higher_is_better = better("token_f1", "bleu")

    def __init__(
        self, ignore_ids: tuple[int, ...] = (PAD, BOS, EOS), eos_id: int | None = EOS
    ) -> None:
        super().__init__()
        self.ignore_ids, self.eos_id = tuple(ignore_ids), eos_id

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        pred = output.argmax(-1) if output.is_floating_point() else output
        self._keep(pred=pred.long(), ref=targets["caption"].long())

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        kw = {"ignore_ids": self.ignore_ids, "eos_id": self.eos_id}
        return {
            "token_f1": M.token_f1(parts["pred"], parts["ref"], **kw),
            "bleu": M.bleu(parts["pred"], parts["ref"], **kw),
        }

    def resampler(self) -> Resampler:
        """Token F1 is a mean over clips and BLEU a function of summed per-clip n-gram counts,
        so both are computed per clip once."""
        parts = self.parts()
        kw = {"ignore_ids": self.ignore_ids, "eos_id": self.eos_id}
        f1 = torch.tensor(M.token_f1_scores(parts["pred"], parts["ref"], **kw))
        stats = M.bleu_stats(parts["pred"], parts["ref"], **kw)

        def at(idx: torch.Tensor) -> dict[str, float]:
            return finite(
                {
                    "token_f1": float(f1[idx].mean()) if len(idx) else math.nan,
                    "bleu": M.bleu_of_stats(stats[idx].sum(0)),
                }
            )

        return at


@TASK_METRICS.register("qa")
class QAMetric(TaskMetric):
    """Exact-match answer accuracy over all questions (answers < 0 are unlabelled)."""

    task, target_keys = "qa", ("answers",)
    primary = "accuracy"
    higher_is_better = better("accuracy")

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        if output.is_floating_point() and output.shape[-1] != len(ANSWERS):
            raise UsageError(
                f"metrics for task 'qa': expected logits [B, Q, {len(ANSWERS)}], "
                f"got {list(output.shape)}"
            )
        pred = output.argmax(-1) if output.is_floating_point() else output
        self._keep(pred=pred.long(), answers=targets["answers"].long())

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"accuracy": M.qa_accuracy(parts["pred"], parts["answers"])}


@TASK_METRICS.register("summary")
class SummaryMetric(TaskMetric):
    """Keyframe importance: MAE and the mean per-clip Spearman (ranking frames within a clip)."""

    task, target_keys = "summary", ("keyframes",)
    primary = "spearman"
    higher_is_better = better("spearman", lower=("mae",))

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        self._keep(pred=output.float(), target=targets["keyframes"].float())

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        rhos = [M.spearman(p, t) for p, t in zip(parts["pred"], parts["target"], strict=True)]
        rhos = [r for r in rhos if not math.isnan(r)]
        return {
            "mae": float((parts["pred"] - parts["target"]).abs().mean()),
            "spearman": sum(rhos) / len(rhos) if rhos else math.nan,
        }

    def resampler(self) -> Resampler:
        """Per-clip Spearman and absolute error, computed once."""
        parts = self.parts()
        rho = torch.tensor(
            [M.spearman(p, t) for p, t in zip(parts["pred"], parts["target"], strict=True)],
            dtype=torch.float64,
        )
        err = (parts["pred"] - parts["target"]).abs().double().mean(1)

        def at(idx: torch.Tensor) -> dict[str, float]:
            r = rho[idx]
            r = r[~r.isnan()]
            return finite(
                {
                    "mae": float(err[idx].mean()) if len(idx) else math.nan,
                    "spearman": float(r.mean()) if len(r) else math.nan,
                }
            )

        return at
