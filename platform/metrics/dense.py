"""Meters of the dense kinds: detection (boxes), segmentation (masks), keypoints and the pixel
kinds (restoration, next frame).

See :mod:`veilfed.metrics.meter` for what a meter keeps and computes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from veilfed.errors import UsageError
from veilfed.metrics import functional as M
from veilfed.metrics.meter import TASK_METRICS, Resampler, TaskMetric, better, finite
from veilfed.tasks import UNKNOWN_BOX


@TASK_METRICS.register("detection")
class DetectionMetric(TaskMetric):
    """mAP@0.5 with every frame an image; output dict, see the package docstring. Kept per clip
    (``[B, T, N, ...]``), flattened to images at compute."""

    primary = "map50"
    higher_is_better = better("map50")

    def _update(self, output: Any, targets: dict[str, torch.Tensor]) -> None:
        if not isinstance(output, dict) or "boxes" not in output:
            raise UsageError(
                f"metrics for task {self.task!r}: expected a dict with 'boxes' and "
                "'logits' (or 'scores' and 'classes')"
            )
        boxes = output["boxes"]
        if "logits" in output:
            logits = output["logits"]
            n = len(self.spec.classes) + 1
            if logits.shape[-1] != n:
                raise UsageError(
                    f"metrics for task {self.task!r}: logits need {n} classes (last = no "
                    f"object), got {logits.shape[-1]}"
                )
            scores, classes = logits.float().softmax(-1)[..., :-1].max(-1)
        else:
            scores, classes = output["scores"], output["classes"]
        b, t = boxes.shape[:2]
        gt_classes = self.target(targets, "classes").long().reshape(b, t, -1)
        pred_scores = scores.float().reshape(b, t, -1)
        pred_classes = classes.long().reshape(b, t, -1)
        # A frame nobody annotated is scored as an image with no boxes and no detections.
        unknown = (gt_classes == UNKNOWN_BOX).all(-1, keepdim=True).to(gt_classes.device)
        self._keep(
            pred_boxes=boxes.float().reshape(b, t, -1, 4),
            pred_scores=pred_scores.masked_fill(unknown.to(pred_scores.device), 0.0),
            pred_classes=pred_classes.masked_fill(unknown.to(pred_classes.device), -1),
            gt_boxes=self.target(targets, "boxes").float().reshape(b, t, -1, 4),
            gt_classes=gt_classes.masked_fill(unknown, -1),
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
            return finite({"map50": M.map50_of_matches(matches, np.repeat(per_clip, frames))})

        return at


def _images(parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``[B, T, ...]`` detection parts -> ``[B * T, ...]`` (every frame an image)."""
    return {k: v.reshape(-1, *v.shape[2:]) for k, v in parts.items()}


@TASK_METRICS.register("segmentation")
class SegmentationMetric(TaskMetric):
    """mIoU and pixel accuracy over background + the task's classes; logits are upsampled to the
    label resolution first. Pixels labelled -1 (frames without a mask) are not scored."""

    primary = "miou"
    higher_is_better = better("miou", "pixel_accuracy")

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        gt = self.target(targets)
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
        n = len(self.spec.classes) + 1
        conf = [M.confusion_matrix(p, g, n) for p, g in zip(pred, gt, strict=True)]
        self._keep(conf=torch.stack(conf))

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        conf = parts["conf"].sum(0)
        return {
            "miou": M.miou_from_confusion(conf),
            "pixel_accuracy": float(conf.diag().sum() / conf.sum().clamp_min(1)),
        }


@TASK_METRICS.register("keypoints")
class KeypointsMetric(TaskMetric):
    """PCK over visible keypoints: within 0.1 and 0.2 of the figure's box side (``pck_box_0.1``,
    ``pck_box_0.2``, the primary) and within 0.05 and 0.1 of the frame side (``pck_0.05``,
    ``pck_0.1``). The synthetic figure spans about a quarter of the frame, so frame-relative PCK
    at 0.1 is already met by the mean pose; the box-relative one is the usual pose benchmark's.
    No "@": MLflow metric names allow only letters, digits and _ - . / : and space."""

    primary = "pck_box_0.2"
    higher_is_better = better("pck_0.05", "pck_0.1", "pck_box_0.1", "pck_box_0.2")

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        self._keep(
            pred=output.float(),
            gt=self.target(targets, "points").float(),
            vis=self.target(targets, "visible").bool(),
        )

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        args = (parts["pred"], parts["gt"], parts["vis"])
        frame = {f"pck_{th}": M.pck(*args, th) for th in (0.05, 0.1)}
        return frame | {f"pck_box_{a}": M.pck_box(*args, a) for a in (0.1, 0.2)}


class _Pixels(TaskMetric):
    """Per clip: PSNR and SSIM summed over its frames, and its squared error and pixel count,
    so no pixels are kept between batches.

    ``psnr_set`` (the primary) is the PSNR of the squared error pooled over every pixel, as
    torchmetrics' ``PeakSignalNoiseRatio`` accumulates it. ``psnr`` and ``ssim`` are means over
    frames, where a frame equal to its target counts 100 dB: with clean inputs (restoration) or
    still scenes (next frame) that mean mostly counts bit-exact copies, which the identity and
    copy-last baselines make by construction, so it is reported but not the primary.
    """

    primary = "psnr_set"
    higher_is_better = better("psnr", "psnr_set", "ssim")

    def _update(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        target = self.target(targets)
        if output.shape != target.shape:
            raise UsageError(
                f"metrics for task {self.task!r}: output {list(output.shape)} != "
                f"target {list(target.shape)}"
            )
        frames = target.shape[1]
        pairs = list(zip(output, target, strict=True))
        sse = [((o.detach().float().cpu() - t.float().cpu()) ** 2).sum() for o, t in pairs]
        self._keep(
            frames=torch.full((len(pairs),), float(frames), dtype=torch.float64),
            psnr=torch.tensor([M.psnr(o, t) * frames for o, t in pairs], dtype=torch.float64),
            ssim=torch.tensor([M.ssim(o, t) * frames for o, t in pairs], dtype=torch.float64),
            sse=torch.tensor([float(e) for e in sse], dtype=torch.float64),
            pixels=torch.full((len(pairs),), float(target[0].numel()), dtype=torch.float64),
        )

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        n = float(parts["frames"].sum())
        if n == 0:
            return {}
        mse = max(float(parts["sse"].sum()) / float(parts["pixels"].sum()), 1e-10)
        return {
            "psnr": float(parts["psnr"].sum()) / n,
            "psnr_set": 10 * math.log10(1.0 / mse),
            "ssim": float(parts["ssim"].sum()) / n,
        }


@TASK_METRICS.register("restoration")
class RestorationMetric(_Pixels):
    """The restored clip against the clip before degradation."""


@TASK_METRICS.register("next_frame")
class NextFrameMetric(_Pixels):
    """The predicted frames against the frames after the clip."""
