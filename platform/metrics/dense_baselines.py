"""Label-only baselines of the dense kinds: detection, segmentation, keypoints, restoration,
next frame (the table and the interface are in :mod:`veilfed.metrics.baselines`)."""

from __future__ import annotations

from typing import Any

import torch

from veilfed.metrics.baselines import BASELINES, Baseline
from veilfed.tasks import TaskSpec


@BASELINES.register("detection")
class DetectionBaseline(Baseline):
    """One box per frame: the mean training box of the majority class, score 1 (see the module
    docstring for why not "no boxes"); ``boxes [B, T, 1, 4]``, ``scores``, ``classes``."""

    def __init__(self, spec: TaskSpec) -> None:
        super().__init__(spec)
        self.counts = torch.zeros(len(spec.classes), dtype=torch.long)
        self.box_sums = torch.zeros(len(spec.classes), 4, dtype=torch.float64)
        self.cls, self.box = -1, torch.zeros(4)

    def _observe(self, targets: dict[str, torch.Tensor]) -> None:
        classes = self.target(targets, "classes").long().reshape(-1)
        boxes = self.target(targets, "boxes").double().reshape(-1, 4)
        real = classes >= 0
        self.counts += torch.bincount(classes[real], minlength=len(self.counts))
        self.box_sums.index_add_(0, classes[real], boxes[real])

    def _finish(self) -> None:
        if int(self.counts.sum()) > 0:
            self.cls = int(self.counts.argmax())
            self.box = (self.box_sums[self.cls] / self.counts[self.cls]).float()

    def _predict(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        b, t = batch["video"].shape[:2]
        return {
            "boxes": self.box.expand(b, t, 1, 4).clone(),
            "scores": torch.full((b, t, 1), 1.0 if self.cls >= 0 else 0.0),
            "classes": torch.full((b, t, 1), self.cls, dtype=torch.long),
        }


@BASELINES.register("segmentation")
class SegmentationBaseline(Baseline):
    """Every pixel the majority class of the training pixels; labels ``[B, T, H, W]``."""

    def __init__(self, spec: TaskSpec) -> None:
        super().__init__(spec)
        self.counts = torch.zeros(len(spec.classes) + 1, dtype=torch.long)
        self.majority = 0

    def _observe(self, targets: dict[str, torch.Tensor]) -> None:
        labels = self.target(targets).long().reshape(-1)
        labels = labels[(labels >= 0) & (labels < len(self.counts))]
        self.counts += torch.bincount(labels, minlength=len(self.counts))

    def _finish(self) -> None:
        self.majority = int(self.counts.argmax())

    def _predict(self, batch: dict[str, Any]) -> torch.Tensor:
        b, t, _, h, w = batch["video"].shape
        return torch.full((b, t, h, w), self.majority, dtype=torch.long)


@BASELINES.register("keypoints")
class MeanKeypointsBaseline(Baseline):
    """Each keypoint at its mean visible training position, in every frame; ``[B, T, P, 2]``."""

    def __init__(self, spec: TaskSpec) -> None:
        super().__init__(spec)
        p = len(spec.classes)
        self.sums = torch.zeros(p, 2, dtype=torch.float64)
        self.counts = torch.zeros(p, dtype=torch.float64)
        self.mean = torch.full((p, 2), 0.5)

    def _observe(self, targets: dict[str, torch.Tensor]) -> None:
        kp = self.target(targets, "points").double()  # [B, T, P, 2]
        vis = self.target(targets, "visible").double()  # [B, T, P]
        self.sums += (kp * vis[..., None]).sum((0, 1))
        self.counts += vis.sum((0, 1))

    def _finish(self) -> None:
        seen = self.counts > 0
        self.mean[seen] = (self.sums[seen] / self.counts[seen, None]).float()

    def _predict(self, batch: dict[str, Any]) -> torch.Tensor:
        b, t = batch["video"].shape[:2]
        return self.mean.expand(b, t, -1, -1).clone()


def _input_video(batch: dict[str, Any]) -> torch.Tensor:
    """The input clip, zeroed where the video is missing (what the pixel heads start from)."""
    present = batch["modality_mask"][:, 0].to(batch["video"].dtype)
    return batch["video"] * present[:, None, None, None, None]


@BASELINES.register("restoration")
class RestorationBaseline(Baseline):
    """Identity: the degraded input clip itself, ``[B, T, 3, H, W]``."""

    def _observe(self, targets: dict[str, torch.Tensor]) -> None:
        pass

    def _predict(self, batch: dict[str, Any]) -> torch.Tensor:
        return _input_video(batch).float().clamp(0.0, 1.0)


@BASELINES.register("next_frame")
class NextFrameBaseline(Baseline):
    """The last input frame, repeated for each of the K future frames the training targets
    have; ``[B, K, 3, H, W]``."""

    def __init__(self, spec: TaskSpec) -> None:
        super().__init__(spec)
        self.frames = int(spec.options["frames"])

    def _observe(self, targets: dict[str, torch.Tensor]) -> None:
        self.frames = int(self.target(targets).shape[1])

    def _predict(self, batch: dict[str, Any]) -> torch.Tensor:
        last = _input_video(batch)[:, -1:].float().clamp(0.0, 1.0)
        return last.expand(-1, self.frames, -1, -1, -1).clone()
