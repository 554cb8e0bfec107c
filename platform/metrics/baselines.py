"""Label-only baselines: what each task scores from the training labels alone, with no model.

A figure is only a result beside its baseline. Each baseline is fitted on the training set's
``batch["targets"]`` and ``batch["target_mask"]`` (nothing else of a batch: no clip, no audio,
no transcript) and then predicts, for an evaluation batch, an output in its head's format (see
the :mod:`veilfed.metrics` package docstring), so the very :class:`TaskMetric` that scores the
model scores the baseline on the same clips::

    baselines = fit_baselines(tasks, train_loader)         # {task: Baseline}
    meter.update(baselines[t].predict(batch), batch["targets"], batch["target_mask"][t])

At prediction a baseline reads only what the task's head reads besides the fused features: the
QA questions' positions (``targets["questions"]``: the head's question type is the position
modulo ``len(QA_TYPES)``), the input clip for restoration and next-frame (``batch["video"]``,
zeroed where the video is missing, as the heads do) and the batch geometry.

============ ===========================================================================
task         baseline
============ ===========================================================================
action       majority class of the training labels
sentiment    majority class
moderation   majority: never flag or always flag, whichever the training set has more of
qa           majority answer per question type
caption      the most common training caption (token ids), for every clip
quality      constant training mean; its Spearman is undefined and reported as 0.0
summary      constant training mean frame importance; Spearman reported as 0.0
detection    in every frame one box, the mean training box of the majority class, score 1. The
             other trivial predictor (no boxes) scores mAP 0 on any set with a box; this one
             scores at least that, so it is the stronger baseline
segmentation every pixel the majority class of the training pixels (background, usually)
pose         mean training position of each keypoint (visible ones), in every frame
restoration  identity: the degraded input clip
next_frame   the last input frame, repeated for every future frame
============ ===========================================================================

The dense tasks' baselines are in :mod:`veilfed.metrics.dense_baselines`. Ties go to the lowest
class index (deterministic). An unfitted task (no labelled training clip)
raises :class:`~veilfed.errors.UsageError` at predict.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch

from veilfed.data import schema
from veilfed.errors import UsageError
from veilfed.registry import Registry


class Baseline:
    """A label-only predictor for one task: :meth:`fit` on training batches, then :meth:`predict`.

    ``fill``: metrics the baseline's constant output leaves undefined and that are reported as
    the given value instead (Spearman of a constant: 0.0, no rank information).
    """

    task = ""
    fill: dict[str, float] = {}

    def __init__(self) -> None:
        self.fitted = False

    def fit(self, batches: Iterable[dict[str, Any]]) -> Baseline:
        """Fit on ``batch["targets"]`` of the labelled clips (``batch["target_mask"][task]``)."""
        for batch in batches:
            self.observe(batch)
        return self.finish()

    def observe(self, batch: dict[str, Any]) -> None:
        """Add one training batch (only its ``targets`` and ``target_mask`` are read)."""
        targets = batch["targets"]
        mask = batch.get("target_mask", {}).get(self.task)
        if mask is not None:
            keep = mask.bool().reshape(-1)
            if not keep.any():
                return
            targets = {k: v[keep] for k, v in targets.items()}
        self._observe(targets)
        self.fitted = True

    def finish(self) -> Baseline:
        """Settle the prediction once every training batch has been observed."""
        if self.fitted:
            self._finish()
        return self

    def predict(self, batch: dict[str, Any]) -> Any:
        if not self.fitted:
            raise UsageError(
                f"baseline for task {self.task!r}: no labelled training clip to fit it on"
            )
        return self._predict(batch)

    def _observe(self, targets: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        pass

    def _predict(self, batch: dict[str, Any]) -> Any:
        raise NotImplementedError


def _batch_size(batch: dict[str, Any]) -> int:
    return int(batch["video"].shape[0])


BASELINES: Registry[Baseline] = Registry("baseline")


class _Majority(Baseline):
    """Majority class; predicts one-hot logits ``[B, C]``."""

    key = ""
    num_classes = 0

    def __init__(self) -> None:
        super().__init__()
        self.counts = torch.zeros(self.num_classes, dtype=torch.long)
        self.majority = 0

    def _observe(self, targets: dict[str, torch.Tensor]) -> None:
        labels = targets[self.key].long().reshape(-1)
        self.counts += torch.bincount(labels, minlength=len(self.counts))

    def _finish(self) -> None:
        self.majority = int(self.counts.argmax())

    def _predict(self, batch: dict[str, Any]) -> torch.Tensor:
        logits = torch.zeros(_batch_size(batch), self.num_classes)
        logits[:, self.majority] = 1.0
        return logits


@BASELINES.register("action")
class ActionBaseline(_Majority):
    task, key, num_classes = "action", "action", len(schema.ACTIONS)


@BASELINES.register("sentiment")
class SentimentBaseline(_Majority):
    task, key, num_classes = "sentiment", "sentiment", len(schema.SENTIMENTS)


@BASELINES.register("moderation")
class ModerationBaseline(_Majority):
    """Never flag or always flag; one logit ``[B]`` (``+1`` flags)."""

    task, key, num_classes = "moderation", "moderation", 2

    def _observe(self, targets: dict[str, torch.Tensor]) -> None:
        flagged = (targets["moderation"].reshape(-1) > 0.5).long()
        self.counts += torch.bincount(flagged, minlength=2)

    def _predict(self, batch: dict[str, Any]) -> torch.Tensor:
        return torch.full((_batch_size(batch),), 1.0 if self.majority else -1.0)


class _Mean(Baseline):
    """Constant mean of the training values; Spearman of a constant is undefined: 0.0."""

    key = ""
    fill = {"spearman": 0.0}

    def __init__(self) -> None:
        super().__init__()
        self.total, self.count, self.mean = 0.0, 0, 0.0

    def _observe(self, targets: dict[str, torch.Tensor]) -> None:
        values = targets[self.key].double()
        self.total += float(values.sum())
        self.count += values.numel()

    def _finish(self) -> None:
        self.mean = self.total / max(self.count, 1)


@BASELINES.register("quality")
class QualityBaseline(_Mean):
    """The training mean quality score for every clip, ``[B]``."""

    task, key = "quality", "quality"

    def _predict(self, batch: dict[str, Any]) -> torch.Tensor:
        return torch.full((_batch_size(batch),), self.mean)


@BASELINES.register("summary")
class SummaryBaseline(_Mean):
    """The training mean frame importance for every frame, ``[B, T]``."""

    task, key = "summary", "keyframes"

    def _predict(self, batch: dict[str, Any]) -> torch.Tensor:
        return torch.full(tuple(batch["video"].shape[:2]), self.mean)


@BASELINES.register("qa")
class QABaseline(Baseline):
    """Majority answer per question type (type = question position modulo ``len(QA_TYPES)``,
    what the QA head embeds); answer ids ``[B, Q]``."""

    task = "qa"

    def __init__(self) -> None:
        super().__init__()
        types = len(schema.QA_TYPES)
        self.counts = torch.zeros(types, len(schema.ANSWERS), dtype=torch.long)
        self.answer = torch.zeros(types, dtype=torch.long)

    def _observe(self, targets: dict[str, torch.Tensor]) -> None:
        answers = targets["answers"].long()
        qtype = torch.arange(answers.shape[1]) % len(schema.QA_TYPES)
        qtype = qtype.expand_as(answers)
        valid = answers >= 0
        idx = qtype[valid] * len(schema.ANSWERS) + answers[valid]
        self.counts += torch.bincount(idx, minlength=self.counts.numel()).reshape(self.counts.shape)

    def _finish(self) -> None:
        self.answer = self.counts.argmax(1)

    def _predict(self, batch: dict[str, Any]) -> torch.Tensor:
        b, q = batch["targets"]["questions"].shape[:2]
        qtype = torch.arange(q) % len(schema.QA_TYPES)
        return self.answer[qtype].expand(b, q).clone()


@BASELINES.register("caption")
class CaptionBaseline(Baseline):
    """The most common training caption (its token ids, first seen wins a tie), ``[B, L]``."""

    task = "caption"

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[tuple[int, ...]] = Counter()
        self.caption = torch.zeros(0, dtype=torch.long)

    def _observe(self, targets: dict[str, torch.Tensor]) -> None:
        self.counts.update(tuple(row) for row in targets["caption"].long().tolist())

    def _finish(self) -> None:
        self.caption = torch.tensor(self.counts.most_common(1)[0][0], dtype=torch.long)

    def _predict(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.caption.expand(_batch_size(batch), -1).clone()


def fit_baselines(tasks: Iterable[str], batches: Iterable[dict[str, Any]]) -> dict[str, Baseline]:
    """Every task's baseline fitted in one pass over ``batches`` (training batches)."""
    out = {t: BASELINES.build(t) for t in tasks}
    for batch in batches:
        for baseline in out.values():
            baseline.observe(batch)
    return {t: b.finish() for t, b in out.items()}
