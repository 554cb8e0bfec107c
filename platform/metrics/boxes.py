"""Box detection metrics: greedy matching per image, all-point AP per class, mAP@0.5.

Matching (:func:`detection_matches`) is split from averaging (:func:`map50_of_matches`) so a
bootstrap that draws images with replacement reweights the matches instead of matching again:
counting a detection w times gives the AP of a dataset holding its image w times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes ``[N, 4]`` x ``[M, 4]`` -> ``[N, M]``."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _average_precision(
    tp: np.ndarray, scores: np.ndarray, n_gt: float, weights: np.ndarray | None = None
) -> float:
    """All-point interpolated AP (VOC 2010+) from per-detection TP flags and scores; ``weights``
    counts each detection that many times (an image drawn twice by a bootstrap)."""
    order = np.argsort(-scores, kind="stable")
    tp = tp[order].astype(np.float64)
    w = np.ones_like(tp) if weights is None else weights[order].astype(np.float64)
    ctp, cfp = np.cumsum(tp * w), np.cumsum((1 - tp) * w)
    recall = ctp / n_gt
    precision = ctp / np.maximum(ctp + cfp, 1e-12)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


@dataclass(frozen=True)
class DetectionMatches:
    """Greedy matches of every detection of every ground-truth class, per image.

    For class ``classes[k]``: ``image[k]``, ``score[k]``, ``tp[k]`` per detection (images in
    order, each image's detections by descending score) and ``gt[:, k]`` its boxes per image.
    """

    classes: np.ndarray
    image: list[np.ndarray]
    score: list[np.ndarray]
    tp: list[np.ndarray]
    gt: np.ndarray  # [I, len(classes)]


def detection_matches(
    pred_boxes: torch.Tensor,
    pred_scores: torch.Tensor,
    pred_classes: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_classes: torch.Tensor,
    iou_threshold: float = 0.5,
) -> DetectionMatches:
    """Greedy matching in score order within each image (inputs as :func:`detection_map50`)."""
    pb, ps, pc = (t.detach().float().cpu().numpy() for t in (pred_boxes, pred_scores, pred_classes))
    gb, gc = gt_boxes.detach().float().cpu().numpy(), gt_classes.detach().cpu().numpy()
    pc = pc.astype(np.int64)
    classes = np.unique(gc[gc >= 0])
    images, scores, tps = [], [], []
    gt = np.stack([(gc == cls).sum(1) for cls in classes], 1) if classes.size else None
    for cls in classes:
        img, sc, tpc = [], [], []
        for i in range(pb.shape[0]):
            p = np.nonzero(pc[i] == cls)[0]
            if p.size == 0:
                continue
            p = p[np.argsort(-ps[i, p], kind="stable")]
            g = np.nonzero(gc[i] == cls)[0]
            tp = np.zeros(p.size, dtype=bool)
            if g.size:
                iou = box_iou(pb[i, p], gb[i, g])
                taken = np.zeros(g.size, dtype=bool)
                for k in range(p.size):
                    cand = np.where(taken, -1.0, iou[k])
                    j = int(cand.argmax())
                    if cand[j] >= iou_threshold:
                        taken[j], tp[k] = True, True
            img.append(np.full(p.size, i))
            sc.append(ps[i, p])
            tpc.append(tp)
        cat = lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dtype=dt)  # noqa: E731
        images.append(cat(img, np.int64))
        scores.append(cat(sc, np.float32))
        tps.append(cat(tpc, bool))
    if gt is None:
        gt = np.zeros((pb.shape[0], 0), dtype=np.int64)
    return DetectionMatches(classes, images, scores, tps, gt)


def map50_of_matches(m: DetectionMatches, image_weights: np.ndarray | None = None) -> float:
    """mAP of :func:`detection_matches`, each image counted ``image_weights[i]`` times (default
    once): the mean AP over classes with a ground-truth box in the weighted set, NaN if none."""
    w = np.ones(m.gt.shape[0]) if image_weights is None else np.asarray(image_weights, float)
    aps = []
    for k in range(len(m.classes)):
        n_gt = float((m.gt[:, k] * w).sum())
        if n_gt <= 0:
            continue
        dw = w[m.image[k]]
        use = dw > 0
        if not use.any():
            aps.append(0.0)
            continue
        aps.append(_average_precision(m.tp[k][use], m.score[k][use], n_gt, dw[use]))
    return float(np.mean(aps)) if aps else math.nan


def detection_map50(
    pred_boxes: torch.Tensor,
    pred_scores: torch.Tensor,
    pred_classes: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_classes: torch.Tensor,
    iou_threshold: float = 0.5,
) -> float:
    """mAP at IoU 0.5 over images (frames): inputs ``[I, N, 4]``, ``[I, N]``, ``[I, N]``,
    ``[I, M, 4]``, ``[I, M]``; class ``-1`` marks an empty slot on either side.

    Greedy matching in score order within each image, all-point AP per class, mean over classes
    that have at least one ground-truth box (COCO/VOC convention). NaN when there is no GT at all.
    """
    return map50_of_matches(
        detection_matches(
            pred_boxes, pred_scores, pred_classes, gt_boxes, gt_classes, iou_threshold
        )
    )
