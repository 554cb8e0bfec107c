"""Per-task metric accumulators: head output + batch targets -> ``{metric: float}``.

Each class decodes its head's output (see the package docstring for the formats), keeps only the
compact evidence it needs across batches (class indices, confusion matrices, per-frame sums) and
computes exact dataset-level figures in :meth:`TaskMetric.compute` — averaging per-batch mAP or
Spearman would be wrong. NaN figures (e.g. no visible keypoint) are left out rather than reported.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F

from veilfed.data.schema import ACTIONS, ANSWERS, OBJECT_CLASSES, SENTIMENTS
from veilfed.data.text import BOS, EOS, PAD
from veilfed.errors import UsageError
from veilfed.metrics import functional as M
from veilfed.registry import Registry


class TaskMetric:
    """Accumulates one task over batches; ``update`` per batch, ``compute`` once at the end."""

    task = ""
    target_keys: tuple[str, ...] = ()

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
        cat = {k: torch.cat(v) for k, v in self._parts.items()}
        return {k: v for k, v in self._compute(cat).items() if not math.isnan(v)}

    def _keep(self, **parts: torch.Tensor) -> None:
        for k, v in parts.items():
            self._parts[k].append(v.detach().cpu())

    def _update(self, output: Any, targets: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError


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

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        self._keep(pred=_flat(output, self.task).float(), target=targets["quality"].float())

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        return M.regression(parts["pred"], parts["target"])


@TASK_METRICS.register("detection")
class DetectionMetric(TaskMetric):
    """mAP@0.5 with every frame an image; output dict, see the package docstring."""

    task, target_keys = "detection", ("boxes", "box_classes")

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
        n = boxes.shape[0] * boxes.shape[1]
        self._keep(
            pred_boxes=boxes.float().reshape(n, -1, 4),
            pred_scores=scores.float().reshape(n, -1),
            pred_classes=classes.long().reshape(n, -1),
            gt_boxes=targets["boxes"].float().reshape(n, -1, 4),
            gt_classes=targets["box_classes"].long().reshape(n, -1),
        )

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"map50": M.detection_map50(**parts)}


@TASK_METRICS.register("segmentation")
class SegmentationMetric(TaskMetric):
    """mIoU and pixel accuracy; logits are upsampled to the label resolution first."""

    task, target_keys = "segmentation", ("segmentation",)
    num_classes = len(OBJECT_CLASSES) + 1

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
        self._keep(conf=M.confusion_matrix(pred, gt, self.num_classes)[None])

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


@TASK_METRICS.register("qa")
class QAMetric(TaskMetric):
    """Exact-match answer accuracy over all questions (answers < 0 are unlabelled)."""

    task, target_keys = "qa", ("answers",)

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

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        self._keep(pred=output.float(), target=targets["keyframes"].float())

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        rhos = [M.spearman(p, t) for p, t in zip(parts["pred"], parts["target"], strict=True)]
        rhos = [r for r in rhos if not math.isnan(r)]
        return {
            "mae": float((parts["pred"] - parts["target"]).abs().mean()),
            "spearman": sum(rhos) / len(rhos) if rhos else math.nan,
        }


class _Pixels(TaskMetric):
    """PSNR/SSIM per frame, summed per batch so no pixels are kept between batches."""

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        target = targets[self.target_keys[0]]
        if output.shape != target.shape:
            raise UsageError(
                f"metrics for task {self.task!r}: output {list(output.shape)} != "
                f"target {list(target.shape)}"
            )
        frames = target.shape[0] * target.shape[1]
        self._keep(
            frames=torch.tensor([frames], dtype=torch.float64),
            psnr=torch.tensor([M.psnr(output, target) * frames], dtype=torch.float64),
            ssim=torch.tensor([M.ssim(output, target) * frames], dtype=torch.float64),
        )

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        n = float(parts["frames"].sum())
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
