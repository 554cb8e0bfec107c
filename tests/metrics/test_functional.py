"""Metric functions against hand-computed values and scipy."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import spearmanr

from veilfed.metrics import functional as M


def test_classification_macro_hand_computed() -> None:
    # class 0: P 1/2 R 1/1; class 1: P 2/2 R 2/3; class 2 absent on both sides (skipped)
    res = M.classification(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]), 3)
    assert res["accuracy"] == pytest.approx(0.75)
    assert res["precision"] == pytest.approx(0.75)
    assert res["recall"] == pytest.approx((1 + 2 / 3) / 2)
    assert res["f1"] == pytest.approx((2 / 3 + 0.8) / 2)


def test_classification_accepts_logits() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    assert M.classification(logits, torch.tensor([0, 1, 1]), 2)["accuracy"] == pytest.approx(2 / 3)


def test_spearman_matches_scipy_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (40,), generator=g).float()
    y = x + torch.randn(40, generator=g)
    assert M.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-6)
    assert math.isnan(M.spearman(torch.ones(5), y[:5]))


def test_regression_mae() -> None:
    res = M.regression(torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.0, 0.5, 1.0]))
    assert res["mae"] == pytest.approx(0.2 / 3)
    assert res["spearman"] == pytest.approx(1.0)


def _det(preds: list[tuple[list[float], float, int]], gts: list[tuple[list[float], int]]):
    return (
        torch.tensor([[p[0] for p in preds]]),
        torch.tensor([[p[1] for p in preds]]),
        torch.tensor([[p[2] for p in preds]]),
        torch.tensor([[g[0] for g in gts]]),
        torch.tensor([[g[1] for g in gts]]),
    )


def test_map50_two_boxes_hand_computed() -> None:
    a, b, off = [0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0, 0.5, 0.5, 1]
    # ranked: TP (P1 R.5), FP (P.5 R.5), TP (P2/3 R1) -> AP = .5*1 + .5*2/3
    args = _det([(a, 0.9, 0), (off, 0.8, 0), (b, 0.7, 0)], [(a, 0), (b, 0)])
    assert M.detection_map50(*args) == pytest.approx(0.5 + 1 / 3)
    # a second class with one missed GT contributes AP 0
    args = _det([(a, 0.9, 0), (off, 0.8, 0), (b, 0.7, 0)], [(a, 0), (b, 0), (off, 1)])
    assert M.detection_map50(*args) == pytest.approx((0.5 + 1 / 3) / 2)


def test_map50_duplicate_is_false_positive_and_iou_threshold() -> None:
    a = [0, 0, 0.5, 0.5]
    args = _det([(a, 0.9, 0), (a, 0.8, 0)], [(a, 0), ([0.5, 0.5, 1, 1], 0)])
    assert M.detection_map50(*args) == pytest.approx(0.5)
    # IoU 0.5 matches, IoU 0.4 does not
    assert M.detection_map50(*_det([([0, 0, 0.5, 0.25], 0.9, 0)], [(a, 0)])) == pytest.approx(1.0)
    assert M.detection_map50(*_det([([0, 0, 0.5, 0.2], 0.9, 0)], [(a, 0)])) == pytest.approx(0.0)
    # empty slots (-1) on both sides are ignored
    args = _det([(a, 0.9, 0), ([0, 0, 0, 0], 0.99, -1)], [(a, 0), ([0, 0, 0, 0], -1)])
    assert M.detection_map50(*args) == pytest.approx(1.0)


def test_miou_hand_computed() -> None:
    pred, gt = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1])
    assert M.miou(pred, gt, 3) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_pck() -> None:
    gt = torch.zeros(1, 3, 2)
    pred = torch.tensor([[[0.05, 0.0], [0.0, 0.2], [0.09, 0.0]]])
    vis = torch.tensor([[True, True, False]])
    assert M.pck(pred, gt, vis, 0.1) == pytest.approx(0.5)
    assert math.isnan(M.pck(pred, gt, torch.zeros_like(vis), 0.1))


def test_pck_box_is_relative_to_the_figure() -> None:
    # One frame, a figure 0.5 wide and 0.2 tall: the threshold is alpha x 0.5.
    gt = torch.tensor([[[0.0, 0.0], [0.5, 0.2], [0.25, 0.1]]])
    vis = torch.tensor([[True, True, True]])
    pred = gt + torch.tensor([[[0.09, 0.0], [0.0, 0.11], [0.0, 0.0]]])
    assert M.pck_box(pred, gt, vis, 0.2) == pytest.approx(2 / 3)  # 0.09, 0 in; 0.11 out
    assert M.pck_box(pred, gt, vis, 0.1) == pytest.approx(1 / 3)
    assert M.pck(pred, gt, vis, 0.1) == pytest.approx(2 / 3)  # frame-relative differs
    half = torch.tensor([[True, True, False]])
    assert M.pck_box(pred, gt, half, 0.2) == pytest.approx(1 / 2)  # box of visible points only
    assert math.isnan(M.pck_box(pred, gt, torch.zeros_like(vis), 0.2))


def test_psnr_known_mse_and_ssim_order() -> None:
    target = torch.rand(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.8
    assert M.psnr(target + 0.1, target) == pytest.approx(20.0, abs=1e-3)
    assert M.ssim(target, target) == pytest.approx(1.0, abs=1e-5)
    noisy = (target + 0.05 * torch.randn_like(target)).clamp(0, 1)
    noisier = (target + 0.3 * torch.randn_like(target)).clamp(0, 1)
    assert 1.0 > M.ssim(noisy, target) > M.ssim(noisier, target)
    assert M.ssim(torch.rand(1, 3, 6, 6), torch.rand(1, 3, 6, 6)) < 1.0  # tiny frames work


def test_token_f1_and_bleu() -> None:
    pred, ref = torch.tensor([[5, 6, 7, 0]]), torch.tensor([[5, 6, 8, 9]])
    assert M.token_f1(pred, ref) == pytest.approx(4 / 7)
    # tokens after EOS (2) and BOS (1) never count
    pred2, ref2 = torch.tensor([[1, 5, 6, 2, 9]]), torch.tensor([[1, 5, 6, 2, 0]])
    assert M.token_f1(pred2, ref2, ignore_ids=(0, 1, 2), eos_id=2) == pytest.approx(1.0)
    same = torch.tensor([[3, 4, 5, 6, 7, 0]])
    assert M.bleu(same, same) == pytest.approx(1.0)
    assert M.bleu(torch.tensor([[3, 4, 9, 6, 7, 0]]), same) < 1.0


def test_qa_accuracy_skips_unlabelled() -> None:
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 1] = logits[0, 1, 2] = logits[0, 2, 3] = 1
    assert M.qa_accuracy(logits, torch.tensor([[1, 0, -1]])) == pytest.approx(0.5)
