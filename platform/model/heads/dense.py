"""Per-frame heads on the video grid: detection, segmentation, keypoints, frame scores.

Frames are predicted per grid token, ``tp = T / T'`` frames each, so the video encoder's temporal
stride costs no temporal resolution in the outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from veilfed.model.heads.base import Head, HeadInput, SlotPool, unpatchify
from veilfed.model.layers import flat_apply
from veilfed.model.registry import HEADS
from veilfed.tasks import UNKNOWN_BOX, TaskSpec


def _tp(inp: HeadInput) -> int:
    return inp.frames // inp.grid.shape[1]


@HEADS.register("detection")
class DetectionHead(Head):
    """DETR-style fixed slots per frame (the task's ``slots``), matched to the label order.

    Each slot soft-argmaxes its object's center over the grid, then regresses a center offset and
    box size and classifies (last class = no object) from the slot's pooled feature.
    """

    requires = ("video",)
    uses_grid = True

    def __init__(self, dim: int, spec: TaskSpec, tp: int = 2, **_: object) -> None:
        super().__init__(dim, spec)
        self.classes = len(spec.classes)
        self.pool = SlotPool(dim, spec.options["slots"], tp)
        self.out = nn.Linear(dim, self.classes + 1 + 4)

    def forward(self, inp: HeadInput) -> dict[str, Tensor]:
        centers, feats = self.pool(inp.grid)
        raw = flat_apply(self.out, feats)
        logits, box = raw[..., : self.classes + 1], raw[..., self.classes + 1 :]
        h, w = inp.grid.shape[2:4]
        cell = torch.tensor([1.0 / w, 1.0 / h], device=box.device)
        center = centers + torch.tanh(box[..., :2]) * cell
        half = torch.sigmoid(box[..., 2:]) / 2
        boxes = torch.cat([center - half, center + half], dim=-1).clamp(0.0, 1.0)
        return {"boxes": boxes, "logits": logits}

    def loss(self, output: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
        cls = self.target(targets, "classes")
        target = torch.where(cls < 0, torch.full_like(cls, self.classes), cls)
        ce = F.cross_entropy(output["logits"].flatten(0, 2), target.flatten(), reduction="none")
        known = (cls != UNKNOWN_BOX).float()  # slots of unannotated frames carry no loss
        ce = (ce.view(cls.shape) * known).sum(dim=(1, 2)) / known.sum(dim=(1, 2)).clamp(min=1.0)
        present = (cls >= 0).float().unsqueeze(-1)
        boxes = self.target(targets, "boxes")
        l1 = ((output["boxes"] - boxes).abs() * present).sum(dim=(1, 2, 3))
        boxes_loss = l1 / present.sum(dim=(1, 2, 3)).clamp(min=1.0)
        return ce + 5.0 * boxes_loss


@HEADS.register("keypoints")
class KeypointsHead(Head):
    """One figure's keypoints (the task's classes, in order) per frame, as soft-argmax of
    per-keypoint spatial heatmaps plus a learned sub-cell offset."""

    requires = ("video",)
    uses_grid = True

    def __init__(self, dim: int, spec: TaskSpec, tp: int = 2, **_: object) -> None:
        super().__init__(dim, spec)
        self.pool = SlotPool(dim, len(spec.classes), tp)
        self.offset = nn.Linear(dim, 2)

    def forward(self, inp: HeadInput) -> Tensor:
        centers, feats = self.pool(inp.grid)
        h, w = inp.grid.shape[2:4]
        cell = torch.tensor([1.0 / w, 1.0 / h], device=feats.device)
        return centers + torch.tanh(flat_apply(self.offset, feats)) * cell

    def loss(self, output: Tensor, targets: dict[str, Tensor]) -> Tensor:
        vis = self.target(targets, "visible").float().unsqueeze(-1)
        err = ((output - self.target(targets, "points")).abs() * vis).sum(dim=(1, 2, 3))
        return err / (2 * vis.sum(dim=(1, 2, 3))).clamp(min=1.0) * 10.0


@HEADS.register("frame_scores")
class FrameScoresHead(Head):
    """A score in [0, 1] per frame (keyframe importance) from the grid pooled over space;
    soft-target BCE over the frames whose score is known (>= 0).

    Evaluation reports scores in steps of ``1 / levels`` (the task's option), see :meth:`predict`.
    """

    requires = ("video",)
    uses_grid = True

    def __init__(self, dim: int, spec: TaskSpec, tp: int = 2, **_: object) -> None:
        super().__init__(dim, spec)
        self.tp, self.levels = tp, spec.options["levels"]
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, tp))

    def forward(self, inp: HeadInput) -> Tensor:
        # Mean and max over space: a small event (a symbol appearing in a corner) is diluted by
        # the mean over the grid but stands out in the max.
        frames = torch.cat([inp.grid.mean(dim=(2, 3)), inp.grid.amax(dim=(2, 3))], dim=-1)
        logits = self.mlp(frames)  # [B, T', tp]
        return logits.flatten(1).sigmoid()

    def loss(self, output: Tensor, targets: dict[str, Tensor]) -> Tensor:
        target = self.target(targets).float()
        known = (target >= 0).float()
        bce = F.binary_cross_entropy(output, target.clamp(min=0.0), reduction="none")
        return (bce * known).sum(dim=1) / known.sum(dim=1).clamp(min=1.0)

    def predict(self, output: Tensor) -> Tensor:
        """Importance in steps of ``1 / levels``: frames the head finds equally important (every
        frame of a steady motion) rank equal instead of being ordered by sub-level jitter."""
        return (output * self.levels).round() / self.levels


@HEADS.register("segmentation")
class SegmentationHead(Head):
    """Per-pixel logits over background + the task's classes from the shared pixel decoder,
    painted at ``1 / scale`` resolution and bilinearly upsampled to the frame. Pixels labelled -1
    (frames without a mask) carry no loss."""

    requires = ("video",)
    uses_grid = True
    uses_pixels = True

    def __init__(
        self,
        dim: int,
        spec: TaskSpec,
        pixel_dim: int = 64,
        tp: int = 2,
        patch: int = 8,
        scale: int = 2,
        **_: object,
    ) -> None:
        super().__init__(dim, spec)
        self.tp, self.patch = tp, max(1, patch // scale)
        self.classes = len(spec.classes) + 1
        self.out = nn.Linear(pixel_dim, tp * self.patch**2 * self.classes)

    def forward(self, inp: HeadInput) -> Tensor:
        logits = unpatchify(
            flat_apply(self.out, inp.pixels), self.tp, self.patch, self.patch, self.classes
        )
        b, t, c, h, w = logits.shape
        size = inp.batch["video"].shape[-2:]
        if (h, w) != tuple(size):
            logits = F.interpolate(
                logits.view(b * t, c, h, w), size=size, mode="bilinear", align_corners=False
            ).view(b, t, c, *size)
        return logits

    def loss(self, output: Tensor, targets: dict[str, Tensor]) -> Tensor:
        target = self.target(targets)
        ce = F.cross_entropy(output.transpose(1, 2), target, ignore_index=-1, reduction="none")
        known = (target >= 0).flatten(1).float()
        return ce.flatten(1).sum(dim=1) / known.sum(dim=1).clamp(min=1.0)
