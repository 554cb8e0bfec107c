"""Meters of the clip-level kinds: classification, binary, multilabel, regression, caption, QA,
frame scores.

See :mod:`veilfed.metrics.meter` for what a meter keeps and computes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch

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
from veilfed.tasks import TaskSpec

__all__ = ["TASK_METRICS", "TaskMetric", "compute_task_metrics"]


def _logits(meter: TaskMetric, output: torch.Tensor) -> torch.Tensor:
    """``output`` if it is ``[B, C]`` over the task's classes, else a one-line error."""
    n = len(meter.spec.classes)
    if output.dim() != 2 or output.shape[1] != n:
        raise UsageError(
            f"metrics for task {meter.task!r}: expected logits [B, {n}], got {list(output.shape)}"
        )
    return output


PER_CLASS_MAX = 32  # tasks with more classes report only the macro averages
_UNSAFE = re.compile(r"[^\w.-]")


def class_keys(prefix: str, classes: Sequence[str]) -> list[str]:
    """Metric names ``<prefix>_<class>`` of a task's classes (characters an MLflow key or a
    ``<task>/<metric>`` name cannot hold become ``_``; names that then collide use the index)."""
    keys = [f"{prefix}_{_UNSAFE.sub('_', c)}" for c in classes]
    return keys if len(set(keys)) == len(keys) else [f"{prefix}_{k}" for k in range(len(keys))]


def _per_class(prefix: str, classes: Sequence[str], values: torch.Tensor, present: torch.Tensor):
    """``{<prefix>_<class>: value}`` for the classes ``present`` in the labels."""
    if len(classes) > PER_CLASS_MAX:
        return {}
    keys = class_keys(prefix, classes)
    return {keys[c]: float(values[c]) for c in range(len(classes)) if bool(present[c])}


@TASK_METRICS.register("classification")
class ClassificationMetric(TaskMetric):
    """Logits ``[B, C]`` over the task's classes: accuracy and macro precision, recall, F1, and
    each labelled class's recall as ``recall_<class>`` (:func:`class_keys`), so a model that
    only ever names the majority class shows it class by class."""

    primary = "accuracy"
    higher_is_better = better("accuracy", "precision", "recall", "f1")

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        self._keep(pred=_logits(self, output).argmax(-1), target=self.target(targets).long())

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        pred, target, n = parts["pred"], parts["target"], len(self.spec.classes)
        out = M.classification(pred, target, n)
        if not out:
            return out
        support = torch.bincount(target, minlength=n).double()
        hits = torch.bincount(target[pred == target], minlength=n).double()
        recall = hits / support.clamp(min=1)
        return out | _per_class("recall", self.spec.classes, recall, support > 0)


@TASK_METRICS.register("binary")
class BinaryMetric(TaskMetric):
    """One logit per clip (``> 0`` = flagged); macro over {not flagged, flagged}."""

    primary = "f1"
    higher_is_better = better("accuracy", "precision", "recall", "f1")

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        self._keep(
            pred=(flat_scalar(output, self.task) > 0).long(),
            target=(self.target(targets) > 0.5).long(),
        )

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        return M.classification(parts["pred"], parts["target"], 2)


@TASK_METRICS.register("multilabel")
class MultilabelMetric(TaskMetric):
    """One logit per class ``[B, C]`` (``> 0`` = the label applies): ``f1`` the mean over classes
    of each class's F1 (the primary), ``micro_f1`` over every (clip, class) decision, ``accuracy``
    the share of right decisions, and ``f1_<class>`` for each class some clip carries."""

    primary = "f1"
    higher_is_better = better("f1", "micro_f1", "accuracy")

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        pred = (_logits(self, output) > 0).long()
        self._keep(pred=pred, target=(self.target(targets) > 0.5).long())

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        pred, target = parts["pred"].bool(), parts["target"].bool()
        tp = (pred & target).sum(0).double()
        fp = (pred & ~target).sum(0).double()
        fn = (~pred & target).sum(0).double()
        per_class = 2 * tp / (2 * tp + fp + fn).clamp(min=1)
        micro = 2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()).clamp(min=1)
        return {
            "f1": float(per_class.mean()),
            "micro_f1": float(micro),
            "accuracy": float((pred == target).double().mean()),
        } | _per_class("f1", self.spec.classes, per_class, target.any(0))


@TASK_METRICS.register("regression")
class RegressionMetric(TaskMetric):
    """A score per clip ``[B]``: MAE and Spearman (the primary) against the labelled value."""

    primary = "spearman"
    higher_is_better = better("spearman", lower=("mae",))

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        self._keep(pred=flat_scalar(output, self.task).float(), target=self.target(targets).float())

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        return M.regression(parts["pred"], parts["target"])


@TASK_METRICS.register("caption")
class CaptionMetric(TaskMetric):
    """Token F1 and BLEU-4 of predicted ids (argmax of logits) against the reference caption.

    The tokenizer's PAD/BOS/EOS never count and tokens after EOS are dropped.
    """

    primary = "token_f1"
    higher_is_better = better("token_f1", "bleu")

    def __init__(
        self,
        spec: TaskSpec,
        ignore_ids: tuple[int, ...] = (PAD, BOS, EOS),
        eos_id: int | None = EOS,
    ) -> None:
        super().__init__(spec)
        self.ignore_ids, self.eos_id = tuple(ignore_ids), eos_id

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        pred = output.argmax(-1) if output.is_floating_point() else output
        self._keep(pred=pred.long(), ref=self.target(targets).long())

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

    reads = ("answers",)
    primary = "accuracy"
    higher_is_better = better("accuracy")

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        n = len(self.spec.classes)
        if output.is_floating_point() and output.shape[-1] != n:
            raise UsageError(
                f"metrics for task {self.task!r}: expected logits [B, Q, {n}], "
                f"got {list(output.shape)}"
            )
        pred = output.argmax(-1) if output.is_floating_point() else output
        self._keep(pred=pred.long(), answers=self.target(targets, "answers").long())

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"accuracy": M.qa_accuracy(parts["pred"], parts["answers"])}


@TASK_METRICS.register("frame_scores")
class FrameScoresMetric(TaskMetric):
    """Per-frame scores (keyframe importance): MAE and the mean per-clip Spearman (ranking frames
    within a clip), over the frames whose score is known (target >= 0)."""

    primary = "spearman"
    higher_is_better = better("spearman", lower=("mae",))

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        self._keep(pred=output.float(), target=self.target(targets).float())

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        rhos, err = _per_clip(parts)
        rhos = rhos[~rhos.isnan()]
        err = err[~err.isnan()]
        return {
            "mae": float(err.mean()) if len(err) else math.nan,
            "spearman": float(rhos.mean()) if len(rhos) else math.nan,
        }

    def resampler(self) -> Resampler:
        """Per-clip Spearman and absolute error, computed once."""
        rho, err = _per_clip(self.parts())

        def at(idx: torch.Tensor) -> dict[str, float]:
            r, e = rho[idx], err[idx]
            r, e = r[~r.isnan()], e[~e.isnan()]
            return finite(
                {
                    "mae": float(e.mean()) if len(e) else math.nan,
                    "spearman": float(r.mean()) if len(r) else math.nan,
                }
            )

        return at


def _per_clip(parts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per clip: Spearman of the known frames' scores, and their mean absolute error (NaN when a
    clip has no known frame)."""
    rhos, errs = [], []
    for p, t in zip(parts["pred"], parts["target"], strict=True):
        known = t >= 0
        rhos.append(M.spearman(p[known], t[known]) if known.sum() > 1 else math.nan)
        errs.append(float((p[known] - t[known]).abs().double().mean()) if known.any() else math.nan)
    return torch.tensor(rhos, dtype=torch.float64), torch.tensor(errs, dtype=torch.float64)
