"""Task accumulators: head formats, masking, accumulation across batches, bad shapes."""

from __future__ import annotations

import math

import pytest
import torch

from veilfed.data.schema import ACTIONS, ANSWERS, OBJECT_CLASSES
from veilfed.errors import UsageError
from veilfed.metrics import TASK_METRICS, build_metric, compute_task_metrics, pck_box
from veilfed.metrics.tasks import class_keys
from veilfed.tasks import KINDS, task_spec

C = len(OBJECT_CLASSES)


def test_every_task_has_a_metric() -> None:
    assert set(TASK_METRICS.names()) == set(KINDS)


def test_mask_skips_unlabelled_samples() -> None:
    logits = torch.eye(len(ACTIONS))[:4] * 5
    targets = {"action": torch.tensor([0, 1, 7, 7])}
    mask = torch.tensor([True, True, False, False])
    assert compute_task_metrics("action", logits, targets, mask)["accuracy"] == 1.0
    assert compute_task_metrics("action", logits, targets)["accuracy"] == 0.5
    assert compute_task_metrics("action", logits, targets, torch.zeros(4, dtype=torch.bool)) == {}


def _detection_batch(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(2, 3, 2, 2, generator=g) * 0.5
    gt = torch.cat([xy, xy + 0.3], -1)
    classes = torch.randint(0, C, (2, 3, 2), generator=g)
    logits = torch.full((2, 3, 2, C + 1), -5.0)
    logits.scatter_(-1, classes[..., None], 5.0)
    jitter = torch.rand(gt.shape, generator=g) * 0.1
    return {"boxes": gt + jitter, "logits": logits}, {"boxes": gt, "box_classes": classes}


def test_detection_accumulates_like_one_batch() -> None:
    (o1, t1), (o2, t2) = _detection_batch(0), _detection_batch(1)
    meter = build_metric("detection")
    meter.update(o1, t1)
    meter.update(o2, t2)
    joined = {k: torch.cat([o1[k], o2[k]]) for k in o1}
    joined_t = {k: torch.cat([t1[k], t2[k]]) for k in t1}
    assert meter.compute() == compute_task_metrics("detection", joined, joined_t)
    perfect = {"boxes": t1["boxes"], "scores": torch.ones(2, 3, 2), "classes": t1["box_classes"]}
    assert compute_task_metrics("detection", perfect, t1)["map50"] == pytest.approx(1.0)


def test_segmentation_upsamples_low_resolution_logits() -> None:
    gt = torch.zeros(1, 2, 8, 8, dtype=torch.long)
    gt[..., :, 4:] = 2
    logits = torch.zeros(1, 2, C + 1, 4, 4)
    logits[..., 0, :, :2] = 1
    logits[..., 2, :, 2:] = 1
    res = compute_task_metrics("segmentation", logits, {"segmentation": gt})
    assert res == {"miou": pytest.approx(1.0), "pixel_accuracy": pytest.approx(1.0)}


def test_scalar_pixel_and_sequence_tasks() -> None:
    assert compute_task_metrics(
        "moderation", torch.tensor([[2.0], [-1.0]]), {"moderation": torch.tensor([1.0, 0.0])}
    )["f1"] == pytest.approx(1.0)
    q = compute_task_metrics(
        "quality", torch.tensor([0.2, 0.4, 0.9]), {"quality": torch.tensor([0.1, 0.5, 1.0])}
    )
    assert q["mae"] == pytest.approx(0.1) and q["spearman"] == pytest.approx(1.0)
    clean = torch.rand(2, 3, 3, 16, 16) * 0.8
    r = compute_task_metrics("restoration", clean + 0.1, {"clean": clean})
    assert r["psnr"] == pytest.approx(20.0, abs=1e-3) and r["ssim"] < 1.0
    assert r["psnr_set"] == pytest.approx(20.0, abs=1e-3)  # one error everywhere: the same
    s = compute_task_metrics(
        "summary",
        torch.tensor([[0.1, 0.5, 0.9], [0.9, 0.5, 0.1]]),
        {"keyframes": torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.5, 1.0]])},
    )
    assert s["spearman"] == pytest.approx(0.0)  # mean of +1 and -1
    answers = torch.tensor([[0, len(ANSWERS) - 1]])
    qa = compute_task_metrics(
        "qa", torch.nn.functional.one_hot(answers, len(ANSWERS)).float(), {"answers": answers}
    )
    assert qa["accuracy"] == 1.0
    cap = torch.tensor([[1, 5, 6, 2, 0]])
    logits = torch.nn.functional.one_hot(cap, 10).float()
    res = build_metric("caption", ignore_ids=(0, 1, 2), eos_id=2)
    res.update(logits, {"caption": cap})
    assert res.compute()["token_f1"] == pytest.approx(1.0)
    vis = torch.ones(1, 2, 7, dtype=torch.bool)
    kp = torch.rand(1, 2, 7, 2)
    pose = compute_task_metrics("pose", kp + 0.07, {"keypoints": kp, "keypoint_visible": vis})
    assert pose["pck_0.05"] == 0.0 and pose["pck_0.1"] == 1.0
    assert pose["pck_box_0.2"] == pck_box(kp + 0.07, kp, vis, 0.2)


def test_pooled_psnr_is_not_dominated_by_exact_copies() -> None:
    """Half the clips copied bit-exactly (a clean input returned as is) and half off by 0.1: the
    per-frame mean counts the copies 100 dB each, the pooled PSNR is 10 log10(1 / (0.01 / 2))."""
    clean = torch.rand(4, 2, 3, 8, 8) * 0.8
    out = clean.clone()
    out[2:] += 0.1
    r = compute_task_metrics("restoration", out, {"clean": clean})
    assert r["psnr"] == pytest.approx((100 + 20) / 2, abs=1e-3)
    assert r["psnr_set"] == pytest.approx(10 * math.log10(2 / 0.01), abs=1e-3)
    assert TASK_METRICS.get("restoration").primary == "psnr_set"
    assert TASK_METRICS.get("next_frame").primary == "psnr_set"


def test_bad_output_shape_is_one_line_usage_error() -> None:
    with pytest.raises(UsageError, match="action"):
        compute_task_metrics("action", torch.zeros(2, 3), {"action": torch.zeros(2).long()})
    with pytest.raises(UsageError, match="lack"):
        compute_task_metrics("action", torch.zeros(2, len(ACTIONS)), {})
    with pytest.raises(UsageError, match="not a task of the synthetic preset"):
        build_metric("nope")


def test_a_declared_task_reports_each_class_by_name() -> None:
    """A constant predictor's macro accuracy can look fine; per-class recall shows it names one
    class only. Class names an MLflow key cannot hold are made safe, collisions fall back to the
    index, and a task with too many classes reports only the averages."""
    scene = task_spec("scene", {"kind": "classification", "classes": ["car toon", "street"]})
    meter = build_metric(scene)
    meter.update(torch.tensor([[2.0, 0.0]] * 4), {"scene": torch.tensor([0, 0, 0, 1])})
    out = meter.compute()
    assert out["accuracy"] == 0.75
    assert (out["recall_car_toon"], out["recall_street"]) == (1.0, 0.0)
    assert class_keys("recall", ["a b", "a_b"]) == ["recall_0", "recall_1"]
    tags = task_spec("tags", {"kind": "multilabel", "classes": ["indoor", "night"]})
    meter = build_metric(tags)
    meter.update(
        torch.tensor([[1.0, -1.0], [1.0, 1.0]]), {"tags": torch.tensor([[1.0, 0], [1, 0]])}
    )
    assert meter.compute()["f1_indoor"] == 1.0 and "f1_night" not in meter.compute()
    many = task_spec("many", {"kind": "classification", "classes": [f"c{i}" for i in range(40)]})
    meter = build_metric(many)
    meter.update(torch.zeros(3, 40), {"many": torch.tensor([0, 1, 2])})
    assert not any(k.startswith("recall_") for k in meter.compute())
