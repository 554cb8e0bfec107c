"""Per-task metric accumulators: head output + batch targets -> ``{metric: float}``.

Each class decodes its head's output (see the package docstring for the formats), keeps only the
compact evidence it needs across batches (class indices, per-clip confusion matrices, per-clip
PSNR/SSIM sums) and computes exact dataset-level figures in :meth:`TaskMetric.compute` —
averaging per-batch mAP or Spearman would be wrong. NaN figures (e.g. no visible keypoint) are
left out rather than reported.

Every kept part has the clip as dim 0, so :meth:`TaskMetric.resampler` recomputes the
dataset-level figures on any multiset of clips (the bootstrap in :mod:`veilfed.metrics.intervals`).
Each class names its ``primary`` metric and, per metric, whether higher is better.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from veilfed.data.schema import ACTIONS, ANSWERS, OBJECT_CLASSES, SENTIMENTS
from veilfed.data.text import BOS, EOS, PAD
from veilfed.errors import UsageError
from veilfed.metrics import functional as M
from veilfed.registry import Registry

Resampler = Callable[[torch.Tensor], dict[str, float]]


class TaskMetric:
    """Accumulates one task over batches; ``update`` per batch, ``compute`` once at the end.

    ``primary``: the one metric a task is judged by; ``higher_is_better``: per metric (``loss``,
    which evaluation adds, included).
    """

    task = ""
    target_keys: tuple[str, ...] = ()
    primary = ""
    higher_is_better: dict[str, bool] = {}

    def __init__(self) -> None:
        self._parts: dict[str, list[torch.Tensor]] = defaultdict(list)

    def update(
        self, output: Any, targets: dict[str, torch.Tensor], mask: torch.Tensor | None = None
    ) -> None:
        """Add one batch; ``mask`` is ``batch["target_mask"][task]`` (unlabelled samples skip)."""
        missing = [k for k in self.target_keys if k not in targets]
        if missing:
            raise UsageError(f"metrics for task {self.task!r}: targets lack {', '.join(missing)}")
        tgt = {k: targets[k] for k in self.target_keys}
        if mask is not None:
            keep = mask.bool().reshape(-1).to(_first(output).device)
            if not keep.any():
                return
            output = _select(output, keep)
            tgt = {k: v[keep.to(v.device)] for k, v in tgt.items()}
        with torch.no_grad():
            self._update(output, tgt)

    def compute(self) -> dict[str, float]:
        if not self._parts:
            return {}
        return _finite(self._compute(self.parts()))

    def parts(self) -> dict[str, torch.Tensor]:
        """The kept evidence, concatenated over batches; dim 0 is the clip."""
        return {k: torch.cat(v) for k, v in self._parts.items()}

    def clips(self) -> int:
        """Clips kept so far (those whose mask was set)."""
        return sum(len(v) for v in next(iter(self._parts.values()), []))

    def resampler(self) -> Resampler:
        """``at(idx)``: the metrics of the clips ``idx`` (a long tensor, repeats allowed), as
        :meth:`compute` would give for a dataset of exactly those clips. Built once per bootstrap;
        tasks whose ``_compute`` is costly precompute per-clip evidence here."""
        parts = self.parts()
        return lambda idx: _finite(self._compute({k: v[idx] for k, v in parts.items()}))

    def _keep(self, **parts: torch.Tensor) -> None:
        for k, v in parts.items():
            self._parts[k].append(v.detach().cpu())

    def _update(self, output: Any, targets: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not math.isnan(v)}


def _better(*higher: str, lower: tuple[str, ...] = ()) -> dict[str, bool]:
    return {m: True for m in higher} | {m: False for m in (*lower, "loss")}


def _first(output: Any) -> torch.Tensor:
    return next(iter(output.values())) if isinstance(output, dict) else output


def _select(output: Any, keep: torch.Tensor) -> Any:
    if isinstance(output, dict):
        return {k: v[keep] for k, v in output.items()}
    return output[keep]


def _flat(x: torch.Tensor, name: str) -> torch.Tensor:
    """``[B]`` or ``[B, 1]`` -> ``[B]``: scalar heads may keep a trailing unit dim."""
    if x.dim() == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 1:
        raise UsageError(
            f"metrics for task {name!r}: expected output [B] or [B, 1], got {list(x.shape)}"
        )
    return x


TASK_METRICS: Registry[TaskMetric] = Registry("task metric")


class _Classification(TaskMetric):
    num_classes = 0
    primary = "accuracy"
    higher_is_better = _better("accuracy", "precision", "recall", "f1")

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
    higher_is_better = _better("accuracy", "precision", "recall", "f1")

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        self._keep(
            pred=(_flat(output, self.task) > 0).long(), target=(targets["moderation"] > 0.5).long()
        )

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        return M.classification(parts["pred"], parts["target"], 2)


@TASK_METRICS.register("quality")
class QualityMetric(TaskMetric):
    """Regression of the clean-ness score in [0, 1]."""

    task, target_keys = "quality", ("quality",)
    primary = "spearman"
    higher_is_better = _better("spearman", lower=("mae",))

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        self._keep(pred=_flat(output, self.task).float(), target=targets["quality"].float())

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        return M.regression(parts["pred"], parts["target"])


@TASK_METRICS.register("detection")
class DetectionMetric(TaskMetric):
    """mAP@0.5 with every frame an image; output dict, see the package docstring. Kept per clip
    (``[B, T, N, ...]``), flattened to images at compute."""

    task, target_keys = "detection", ("boxes", "box_classes")
    primary = "map50"
    higher_is_better = _better("map50")

    def _update(self, output: Any, targets: dict[str, torch.Tensor]) -> None:
        if not isinstance(output, dict) or "boxes" not in output:
            raise UsageError(
                "metrics for task 'detection': expected a dict with 'boxes' and "
                "'logits' (or 'scores' and 'classes')"
            )
        boxes = output["boxes"]
        if "logits" in output:
            logits = output["logits"]
            if logits.shape[-1] != len(OBJECT_CLASSES) + 1:
                raise UsageError(
                    f"metrics for task 'detection': logits need "
                    f"{len(OBJECT_CLASSES) + 1} classes (last = no object), got "
                    f"{logits.shape[-1]}"
                )
            scores, classes = logits.float().softmax(-1)[..., :-1].max(-1)
        else:
            scores, classes = output["scores"], output["classes"]
        b, t = boxes.shape[:2]
        self._keep(
            pred_boxes=boxes.float().reshape(b, t, -1, 4),
            pred_scores=scores.float().reshape(b, t, -1),
            pred_classes=classes.long().reshape(b, t, -1),
            gt_boxes=targets["boxes"].float().reshape(b, t, -1, 4),
            gt_classes=targets["box_classes"].long().reshape(b, t, -1),
        )

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"map50": M.detection_map50(**_images(parts))}

    def resampler(self) -> Resampler:
        """Greedy matching is per image, so it runs once; a resample only reweights images."""
        parts = self.parts()
        frames = parts["gt_classes"].shape[1]
        matches = M.detection_matches(**_images(parts))

        def at(idx: torch.Tensor) -> dict[str, float]:
            per_clip = np.bincount(idx.numpy(), minlength=len(parts["gt_classes"]))
            return _finite({"map50": M.map50_of_matches(matches, np.repeat(per_clip, frames))})

        return at


def _images(parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``[B, T, ...]`` detection parts -> ``[B * T, ...]`` (every frame an image)."""
    return {k: v.reshape(-1, *v.shape[2:]) for k, v in parts.items()}


@TASK_METRICS.register("segmentation")
class SegmentationMetric(TaskMetric):
    """mIoU and pixel accuracy; logits are upsampled to the label resolution first."""

    task, target_keys = "segmentation", ("segmentation",)
    num_classes = len(OBJECT_CLASSES) + 1
    primary = "miou"
    higher_is_better = _better("miou", "pixel_accuracy")

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        gt = targets["segmentation"]
        if output.is_floating_point():
            b, t, c, h, w = output.shape
            logits = output.reshape(b * t, c, h, w).float()
            if (h, w) != tuple(gt.shape[-2:]):
                logits = F.interpolate(
                    logits, size=gt.shape[-2:], mode="bilinear", align_corners=False
                )
            pred = logits.argmax(1).reshape(gt.shape)
        else:
            pred = output
        conf = [M.confusion_matrix(p, g, self.num_classes) for p, g in zip(pred, gt, strict=True)]
        self._keep(conf=torch.stack(conf))

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        conf = parts["conf"].sum(0)
        return {
            "miou": M.miou_from_confusion(conf),
            "pixel_accuracy": float(conf.diag().sum() / conf.sum().clamp_min(1)),
        }


@TASK_METRICS.register("pose")
class PoseMetric(TaskMetric):
    """PCK at 0.05 and 0.1 of the frame side over visible keypoints (``pck_0.05``, ``pck_0.1``;
    no "@": MLflow metric names allow only letters, digits and _ - . / : and space)."""

    task, target_keys = "pose", ("keypoints", "keypoint_visible")
    primary = "pck_0.1"
    higher_is_better = _better("pck_0.05", "pck_0.1")

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        self._keep(
            pred=output.float(),
            gt=targets["keypoints"].float(),
            vis=targets["keypoint_visible"].bool(),
        )

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        return {
            f"pck_{th}": M.pck(parts["pred"], parts["gt"], parts["vis"], th) for th in (0.05, 0.1)
        }


@TASK_METRICS.register("caption")
class CaptionMetric(TaskMetric):
    """Token F1 and BLEU-4 of predicted ids (argmax of logits) against the reference caption.

    The tokenizer's PAD/BOS/EOS never count and tokens after EOS are dropped.
    """

    task, target_keys = "caption", ("caption",)
    primary = "token_f1"
    higher_is_better = _better("token_f1", "bleu")

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
            return _finite(
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
    higher_is_better = _better("accuracy")

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
    higher_is_better = _better("spearman", lower=("mae",))

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
            return _finite(
                {
                    "mae": float(err[idx].mean()) if len(idx) else math.nan,
                    "spearman": float(r.mean()) if len(r) else math.nan,
                }
            )

        return at


class _Pixels(TaskMetric):
    """PSNR/SSIM per frame, summed per clip so no pixels are kept between batches."""

    primary = "psnr"
    higher_is_better = _better("psnr", "ssim")

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        target = targets[self.target_keys[0]]
        if output.shape != target.shape:
            raise UsageError(
                f"metrics for task {self.task!r}: output {list(output.shape)} != "
                f"target {list(target.shape)}"
            )
        frames = target.shape[1]
        pairs = list(zip(output, target, strict=True))
        self._keep(
            frames=torch.full((len(pairs),), float(frames), dtype=torch.float64),
            psnr=torch.tensor([M.psnr(o, t) * frames for o, t in pairs], dtype=torch.float64),
            ssim=torch.tensor([M.ssim(o, t) * frames for o, t in pairs], dtype=torch.float64),
        )

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        n = float(parts["frames"].sum())
        if n == 0:
            return {}
        return {"psnr": float(parts["psnr"].sum()) / n, "ssim": float(parts["ssim"].sum()) / n}


@TASK_METRICS.register("restoration")
class RestorationMetric(_Pixels):
    task, target_keys = "restoration", ("clean",)


@TASK_METRICS.register("next_frame")
class NextFrameMetric(_Pixels):
    task, target_keys = "next_frame", ("next_frames",)


def compute_task_metrics(
    task: str,
    output: Any,
    targets: dict[str, torch.Tensor],
    mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """One-shot metrics of a single batch (evaluation loops should accumulate instead)."""
    meter = TASK_METRICS.build(task, **kwargs)
    meter.update(output, targets, mask)
    return meter.compute()
