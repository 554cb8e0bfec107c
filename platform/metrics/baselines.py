"""Label-only baselines: what each task scores from the training labels alone, with no model.

A figure is only a result beside its baseline. Each baseline is fitted on the training set's
``batch["targets"]`` and ``batch["target_mask"]`` (nothing else of a batch: no clip, no audio,
no transcript) and then predicts, for an evaluation batch, an output in its head's format (see
the :mod:`veilfed.metrics` package docstring), so the very :class:`TaskMetric` that scores the
model scores the baseline on the same clips::

    baselines = fit_baselines(tasks, train_loader)         # {task: Baseline}
    meter.update(baselines[t].predict(batch), batch["targets"], batch["target_mask"][t])

At prediction a baseline reads only what the task's head reads besides the fused features: the
QA questions' positions (the head's question type is the position modulo the task's
``question_types``), the input clip for restoration and next-frame (``batch["video"]``,
zeroed where the video is missing, as the heads do) and the batch geometry.

Baselines are registered per head kind (``veilfed.tasks.KINDS``) and built for one declared
task (:func:`build_baseline`), whose label space and target keys they read.

============== =========================================================================
kind           baseline
============== =========================================================================
classification majority class of the training labels
binary         majority: never flag or always flag, whichever the training set has more of
multilabel     every class seen in training switched on (for each class, the constant with
               the higher F1: "never" scores 0 on a class that occurs)
qa             majority answer per question type
caption        the most common training caption (token ids), for every clip
regression     constant training mean; its Spearman is undefined and reported as 0.0
frame_scores   constant training mean of the known frame scores; Spearman reported as 0.0
detection      in every frame one box, the mean training box of the majority class, score 1.
               The other trivial predictor (no boxes) scores mAP 0 on any set with a box;
               this one scores at least that, so it is the stronger baseline
segmentation   every pixel the majority class of the training pixels (background, usually)
keypoints      mean training position of each keypoint (visible ones), in every frame
restoration    identity: the degraded input clip
next_frame     the last input frame, repeated for every future frame
============== =========================================================================

The dense tasks' baselines are in :mod:`veilfed.metrics.dense_baselines`. Ties go to the lowest
class index (deterministic). An unfitted task (no labelled training clip)
raises :class:`~veilfed.errors.UsageError` at predict.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from veilfed.errors import UsageError
from veilfed.registry import Registry
from veilfed.tasks import TaskSpec, as_spec


class Baseline:
    """A label-only predictor for one task: :meth:`fit` on training batches, then :meth:`predict`.

    ``fill``: metrics the baseline's constant output leaves undefined and that are reported as
    the given value instead (Spearman of a constant: 0.0, no rank information).
    """

    fill: dict[str, float] = {}

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.task = spec.name
        self.fitted = False

    def target(self, targets: dict[str, torch.Tensor], name: str = "target") -> torch.Tensor:
        return targets[self.spec.key(name)]

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


@BASELINES.register("classification")
class MajorityBaseline(Baseline):
    """Majority class; predicts one-hot logits ``[B, C]``."""

    def __init__(self, spec: TaskSpec) -> None:
        super().__init__(spec)
        self.counts = torch.zeros(self.num_classes(), dtype=torch.long)
        self.majority = 0

    def num_classes(self) -> int:
        return len(self.spec.classes)

    def _observe(self, targets: dict[str, torch.Tensor]) -> None:
        labels = self.target(targets).long().reshape(-1)
        self.counts += torch.bincount(labels, minlength=len(self.counts))

    def _finish(self) -> None:
        self.majority = int(self.counts.argmax())

    def _predict(self, batch: dict[str, Any]) -> torch.Tensor:
        logits = torch.zeros(_batch_size(batch), self.num_classes())
        logits[:, self.majority] = 1.0
        return logits


@BASELINES.register("binary")
class FlagBaseline(MajorityBaseline):
    """Never flag or always flag; one logit ``[B]`` (``+1`` flags)."""

    def num_classes(self) -> int:
        return 2

    def _observe(self, targets: dict[str, torch.Tensor]) -> None:
        flagged = (self.target(targets).reshape(-1) > 0.5).long()
        self.counts += torch.bincount(flagged, minlength=2)

    def _predict(self, batch: dict[str, Any]) -> torch.Tensor:
        return torch.full((_batch_size(batch),), 1.0 if self.majority else -1.0)


@BASELINES.register("multilabel")
class SeenLabelsBaseline(Baseline):
    """Every class that occurs in training switched on; logits ``[B, C]`` (+1 on, -1 off)."""

    def __init__(self, spec: TaskSpec) -> None:
        super().__init__(spec)
        self.seen = torch.zeros(len(spec.classes), dtype=torch.bool)

    def _observe(self, targets: dict[str, torch.Tensor]) -> None:
        self.seen |= (self.target(targets) > 0.5).reshape(-1, len(self.seen)).any(0)

    def _predict(self, batch: dict[str, Any]) -> torch.Tensor:
        on = torch.where(self.seen, 1.0, -1.0)
        return on.expand(_batch_size(batch), -1).clone()


class _Mean(Baseline):
    """Constant mean of the known training values (>= 0 for frame scores); Spearman of a
    constant is undefined: 0.0."""

    fill = {"spearman": 0.0}

    def __init__(self, spec: TaskSpec) -> None:
        super().__init__(spec)
        self.total, self.count, self.mean = 0.0, 0, 0.0

    def _observe(self, targets: dict[str, torch.Tensor]) -> None:
        values = self.target(targets).double()
        self.total += float(values.sum())
        self.count += values.numel()

    def _finish(self) -> None:
        self.mean = self.total / max(self.count, 1)


@BASELINES.register("regression")
class MeanBaseline(_Mean):
    """The training mean value for every clip, ``[B]``."""

    def _predict(self, batch: dict[str, Any]) -> torch.Tensor:
        return torch.full((_batch_size(batch),), self.mean)


@BASELINES.register("frame_scores")
class MeanFrameScoreBaseline(_Mean):
    """The training mean of the known frame scores for every frame, ``[B, T]``."""

    def _observe(self, targets: dict[str, torch.Tensor]) -> None:
        values = self.target(targets).double()
        values = values[values >= 0]
        self.total += float(values.sum())
        self.count += values.numel()

    def _predict(self, batch: dict[str, Any]) -> torch.Tensor:
        return torch.full(tuple(batch["video"].shape[:2]), self.mean)


@BASELINES.register("qa")
class QABaseline(Baseline):
    """Majority answer per question type (type = question position modulo the task's
    ``question_types``, what the QA head embeds); answer ids ``[B, Q]``."""

    def __init__(self, spec: TaskSpec) -> None:
        super().__init__(spec)
        self.types = spec.options["question_types"]
        self.counts = torch.zeros(self.types, len(spec.classes), dtype=torch.long)
        self.answer = torch.zeros(self.types, dtype=torch.long)

    def _observe(self, targets: dict[str, torch.Tensor]) -> None:
        answers = self.target(targets, "answers").long()
        qtype = torch.arange(answers.shape[1]) % self.types
        qtype = qtype.expand_as(answers)
        valid = answers >= 0
        idx = qtype[valid] * len(self.spec.classes) + answers[valid]
        self.counts += torch.bincount(idx, minlength=self.counts.numel()).reshape(self.counts.shape)

    def _finish(self) -> None:
        self.answer = self.counts.argmax(1)

    def _predict(self, batch: dict[str, Any]) -> torch.Tensor:
        b, q = self.target(batch["targets"], "questions").shape[:2]
        qtype = torch.arange(q) % self.types
        return self.answer[qtype].expand(b, q).clone()


@BASELINES.register("caption")
class CaptionBaseline(Baseline):
    """The most common training caption (its token ids, first seen wins a tie), ``[B, L]``."""

    def __init__(self, spec: TaskSpec) -> None:
        super().__init__(spec)
        self.counts: Counter[tuple[int, ...]] = Counter()
        self.caption = torch.zeros(0, dtype=torch.long)

    def _observe(self, targets: dict[str, torch.Tensor]) -> None:
        self.counts.update(tuple(row) for row in self.target(targets).long().tolist())

    def _finish(self) -> None:
        self.caption = torch.tensor(self.counts.most_common(1)[0][0], dtype=torch.long)

    def _predict(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.caption.expand(_batch_size(batch), -1).clone()


def build_baseline(task: str | TaskSpec) -> Baseline:
    """An unfitted baseline of ``task`` (a :class:`TaskSpec` or a synthetic preset task's name)."""
    spec = as_spec(task)
    return BASELINES.build(spec.kind, spec=spec)


def fit_baselines(
    tasks: Iterable[str | TaskSpec] | Mapping[str, TaskSpec], batches: Iterable[dict[str, Any]]
) -> dict[str, Baseline]:
    """Every task's baseline fitted in one pass over ``batches`` (training batches); ``tasks``:
    specs (or a ``{name: spec}`` mapping such as ``model.task_specs``) or preset task names."""
    specs = tasks.values() if isinstance(tasks, Mapping) else tasks
    out = {b.task: b for b in map(build_baseline, specs)}
    for batch in batches:
        for baseline in out.values():
            baseline.observe(batch)
    return {t: b.finish() for t, b in out.items()}
