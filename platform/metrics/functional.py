"""Metric functions on plain tensors, one per kind of prediction.

They take already-decoded predictions (class indices, boxes, label maps, token ids) so the same
function serves any head; :mod:`veilfed.metrics.tasks` turns head outputs into these inputs.
torchmetrics supplies the well-trodden ones (macro P/R/F1, SSIM, BLEU); Spearman, mAP@0.5, mIoU,
PCK, token F1 and QA accuracy are small enough to own and test against hand-computed values.
torchmetrics is imported inside the functions that use it: importing it pulls in torchvision and
scipy.signal (seconds), which every ``import veilfed.model`` would otherwise pay.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch


def classification(
    preds: torch.Tensor, targets: torch.Tensor, num_classes: int
) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1; ``preds`` are logits ``[N, C]`` or indices ``[N]``.

    Macro averages skip classes that occur neither in the targets nor in the predictions, so a
    small evaluation set is not penalised for classes it never contains.
    """
    if preds.is_floating_point() and preds.dim() == 2:
        preds = preds.argmax(dim=-1)
    preds, targets = preds.reshape(-1).long().cpu(), targets.reshape(-1).long().cpu()
    if targets.numel() == 0:
        return {}
    from torchmetrics.functional.classification import (
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    kw = {"num_classes": num_classes, "average": "macro"}
    return {
        "accuracy": float((preds == targets).float().mean()),
        "precision": float(multiclass_precision(preds, targets, **kw)),
        "recall": float(multiclass_recall(preds, targets, **kw)),
        "f1": float(multiclass_f1_score(preds, targets, **kw)),
    }


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their mean rank (as scipy.stats.rankdata)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2)[inverse]


def spearman(preds: torch.Tensor, targets: torch.Tensor) -> float:
    """Rank correlation (ties get average ranks); NaN when either side is constant."""
    p = preds.detach().reshape(-1).double().cpu().numpy()
    t = targets.detach().reshape(-1).double().cpu().numpy()
    if p.size < 2 or p.std() == 0 or t.std() == 0:
        return math.nan
    return float(np.corrcoef(_average_ranks(p), _average_ranks(t))[0, 1])


def regression(preds: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Mean absolute error and Spearman rank correlation over all elements."""
    preds, targets = preds.reshape(-1).float().cpu(), targets.reshape(-1).float().cpu()
    if targets.numel() == 0:
        return {}
    return {"mae": float((preds - targets).abs().mean()), "spearman": spearman(preds, targets)}


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


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[C, C]`` counts (rows = target, columns = prediction); targets outside [0, C) skip."""
    pred, target = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
    keep = (target >= 0) & (target < num_classes)
    idx = target[keep] * num_classes + pred[keep].clamp(0, num_classes - 1)
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def miou_from_confusion(conf: torch.Tensor) -> float:
    """Mean IoU over classes present in the target or the prediction."""
    conf = conf.double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else math.nan


def miou(pred_labels: torch.Tensor, gt_labels: torch.Tensor, num_classes: int) -> float:
    """Mean IoU of two label maps of equal shape (background counts as a class)."""
    return miou_from_confusion(confusion_matrix(pred_labels, gt_labels, num_classes))


def pck(
    pred_kp: torch.Tensor, gt_kp: torch.Tensor, visible: torch.Tensor, threshold: float = 0.1
) -> float:
    """Fraction of visible keypoints within ``threshold`` of the truth, in normalised units.

    Coordinates are normalised to the frame, so 0.1 means a tenth of the frame side; the synthetic
    figures have no reliable torso box to normalise by. NaN when nothing is visible.
    """
    vis = visible.bool().cpu()
    if not vis.any():
        return math.nan
    dist = (pred_kp.float().cpu() - gt_kp.float().cpu()).norm(dim=-1)
    return float((dist[vis] <= threshold).float().mean())


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean per-frame PSNR in dB over ``[..., C, H, W]``; identical frames are capped at 100 dB."""
    pred = pred.detach().float().cpu().reshape(-1, *pred.shape[-3:])
    target = target.detach().float().cpu().reshape(-1, *target.shape[-3:])
    mse = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    db = 10 * torch.log10(data_range**2 / mse.clamp_min(1e-10))
    return float(db.clamp_max(100.0).mean())


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean per-frame SSIM (Gaussian window, shrunk for frames smaller than 11 px)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    pred = pred.detach().float().cpu().reshape(-1, *pred.shape[-3:])
    target = target.detach().float().cpu().reshape(-1, *target.shape[-3:])
    side = min(pred.shape[-2:])
    kernel = min(11, side if side % 2 else side - 1)
    return float(
        structural_similarity_index_measure(
            pred.clamp(0, data_range),
            target.clamp(0, data_range),
            data_range=data_range,
            kernel_size=kernel,
            sigma=1.5 * kernel / 11,
        )
    )


def _tokens(row: torch.Tensor, ignore: frozenset[int], stop: int | None) -> list[int]:
    out = []
    for tok in row.tolist():
        if stop is not None and tok == stop:
            break
        if tok not in ignore:
            out.append(tok)
    return out


def token_f1_scores(
    pred_tokens: torch.Tensor,
    ref_tokens: torch.Tensor,
    ignore_ids: Iterable[int] = (0,),
    eos_id: int | None = None,
) -> list[float]:
    """Per-sequence bag-of-tokens F1 (SQuAD style) of ``[N, L]`` token id tensors.

    Tokens after ``eos_id`` are dropped and ``ignore_ids`` (PAD, BOS, EOS) never count.
    """
    ignore = frozenset(ignore_ids)
    scores = []
    for p_row, r_row in zip(pred_tokens.cpu(), ref_tokens.cpu(), strict=True):
        p, r = _tokens(p_row, ignore, eos_id), _tokens(r_row, ignore, eos_id)
        if not p or not r:
            scores.append(float(p == r))
            continue
        common = sum((Counter(p) & Counter(r)).values())
        if common == 0:
            scores.append(0.0)
            continue
        prec, rec = common / len(p), common / len(r)
        scores.append(2 * prec * rec / (prec + rec))
    return scores


def token_f1(
    pred_tokens: torch.Tensor,
    ref_tokens: torch.Tensor,
    ignore_ids: Iterable[int] = (0,),
    eos_id: int | None = None,
) -> float:
    """Mean of :func:`token_f1_scores`; NaN for no sequences."""
    scores = token_f1_scores(pred_tokens, ref_tokens, ignore_ids, eos_id)
    return float(np.mean(scores)) if scores else math.nan


def bleu(
    pred_tokens: torch.Tensor,
    ref_tokens: torch.Tensor,
    ignore_ids: Iterable[int] = (0,),
    eos_id: int | None = None,
    n_gram: int = 4,
) -> float:
    """Corpus BLEU-n (add-one smoothing, short synthetic captions) over token id sequences."""
    from torchmetrics.functional.text import bleu_score

    ignore = frozenset(ignore_ids)

    def text(row: torch.Tensor) -> str:
        return " ".join(str(t) for t in _tokens(row, ignore, eos_id))

    preds = [text(r) for r in pred_tokens.cpu()]
    refs = [[text(r)] for r in ref_tokens.cpu()]
    if not preds:
        return math.nan
    return float(bleu_score(preds, refs, n_gram=n_gram, smooth=True))


def bleu_stats(
    pred_tokens: torch.Tensor,
    ref_tokens: torch.Tensor,
    ignore_ids: Iterable[int] = (0,),
    eos_id: int | None = None,
    n_gram: int = 4,
) -> torch.Tensor:
    """Per-sequence BLEU evidence ``[N, 2 n + 2]``: clipped n-gram matches (n = 1..n_gram),
    candidate n-grams, candidate length, reference length. Summed over any set of sequences,
    :func:`bleu_of_stats` gives that set's corpus :func:`bleu`."""
    ignore = frozenset(ignore_ids)
    rows = []
    for p_row, r_row in zip(pred_tokens.cpu(), ref_tokens.cpu(), strict=True):
        p, r = _tokens(p_row, ignore, eos_id), _tokens(r_row, ignore, eos_id)
        pc, rc = _ngrams(p, n_gram), _ngrams(r, n_gram)
        match, total = [0.0] * n_gram, [0.0] * n_gram
        for g, c in (pc & rc).items():
            match[len(g) - 1] += c
        for g, c in pc.items():
            total[len(g) - 1] += c
        rows.append([*match, *total, float(len(p)), float(len(r))])
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 2 * n_gram + 2)


def _ngrams(tokens: list[int], n_gram: int) -> Counter:
    return Counter(
        tuple(tokens[j : j + i]) for i in range(1, n_gram + 1) for j in range(len(tokens) - i + 1)
    )


def bleu_of_stats(stats: torch.Tensor) -> float:
    """Corpus BLEU (add-one smoothing above unigrams, as :func:`bleu`) of summed
    :func:`bleu_stats`; NaN for no sequences (both lengths 0)."""
    n = (stats.shape[-1] - 2) // 2
    match, total = stats[:n].float(), stats[n : 2 * n].float()
    pred_len, ref_len = float(stats[-2]), float(stats[-1])
    if pred_len == 0 and ref_len == 0 and float(total.sum()) == 0:
        return math.nan
    if float(match.min()) == 0.0:
        return 0.0
    precision = (match + 1) / (total + 1)
    precision[0] = match[0] / total[0]
    geometric = torch.exp(torch.sum(torch.full((n,), 1.0 / n) * torch.log(precision)))
    penalty = 1.0 if pred_len > ref_len else math.exp(1 - ref_len / pred_len)
    return float(penalty * geometric)


def qa_accuracy(preds: torch.Tensor, answers: torch.Tensor) -> float:
    """Exact-match accuracy of logits ``[N, Q, A]`` or indices ``[N, Q]``; answers < 0 skip."""
    if preds.is_floating_point() and preds.dim() == answers.dim() + 1:
        preds = preds.argmax(dim=-1)
    preds, answers = preds.long().cpu(), answers.long().cpu()
    valid = answers >= 0
    return float((preds[valid] == answers[valid]).float().mean()) if valid.any() else math.nan
