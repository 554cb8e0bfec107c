"""Metric functions on plain tensors, one per kind of prediction.

They take already-decoded predictions (class indices, boxes, label maps, token ids) so the same
function serves any head; :mod:`veilfed.metrics.tasks` turns head outputs into these inputs.
torchmetrics supplies the well-trodden ones (macro P/R/F1, SSIM, BLEU); Spearman, mAP@0.5, mIoU,
PCK, token F1 and QA accuracy are small enough to own and test against hand-computed values
(mAP@0.5 and its matching live in :mod:`veilfed.metrics.boxes`, re-exported here).
torchmetrics is imported inside the functions that use it: importing it pulls in torchvision and
scipy.signal (seconds), which every ``import veilfed.model`` would otherwise pay.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import numpy as np
import torch

from veilfed.metrics.boxes import (  # noqa: F401  (part of this module's API)
    DetectionMatches,
    box_iou,
    detection_map50,
    detection_matches,
    map50_of_matches,
)


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


def pck_box(
    pred_kp: torch.Tensor, gt_kp: torch.Tensor, visible: torch.Tensor, alpha: float = 0.2
) -> float:
    """PCK relative to the figure: a visible keypoint counts when it lies within ``alpha`` times
    the longer side of the box around that frame's visible true keypoints (the person-box PCK of
    Yang and Ramanan). Unlike frame-relative PCK it does not reward a constant pose for a figure
    that is small in the frame. Shapes ``[..., P, 2]`` and ``[..., P]``; NaN when nothing is
    visible.
    """
    vis = visible.bool().cpu()
    if not vis.any():
        return math.nan
    gt = gt_kp.float().cpu()
    inf = torch.tensor(math.inf)
    lo = torch.where(vis[..., None], gt, inf).amin(dim=-2)
    hi = torch.where(vis[..., None], gt, -inf).amax(dim=-2)
    side = (hi - lo).amax(dim=-1).nan_to_num(0.0, posinf=0.0, neginf=0.0)  # [...]
    dist = (pred_kp.float().cpu() - gt).norm(dim=-1)
    ok = dist <= alpha * side[..., None]
    return float(ok[vis].float().mean())


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
