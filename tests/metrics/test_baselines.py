"""Label-only baselines: each fitted on hand-made training targets predicts what it should, and
the task's own metric scores it as the hand-computed figure."""

from __future__ import annotations

import pytest
import torch

from veilfed.data import schema
from veilfed.errors import UsageError
from veilfed.metrics import BASELINES, build_baseline, build_metric, fit_baselines
from veilfed.tasks import KINDS

A, Q = len(schema.ACTIONS), len(schema.QA_TYPES)


def _batch(b: int, t: int = 2, h: int = 4, w: int = 4, mask=None, **targets):  # type: ignore[no-untyped-def]
    """A collated batch with only what baselines may read: targets, masks, input geometry."""
    video = torch.rand(b, t, 3, h, w, generator=torch.Generator().manual_seed(b))
    tmask = {task: torch.ones(b, dtype=torch.bool) for task in schema.TASKS}
    tmask |= mask or {}
    return {
        "video": video,
        "modality_mask": torch.ones(b, 3, dtype=torch.bool),
        "targets": targets,
        "target_mask": tmask,
    }


def _score(task: str, output, batch):  # type: ignore[no-untyped-def]
    meter = build_metric(task)
    meter.update(output, batch["targets"], batch["target_mask"][task])
    return meter.compute()


def test_every_task_has_a_baseline() -> None:
    assert set(BASELINES.names()) == set(KINDS)


def test_majority_class_scores_the_majority_share() -> None:
    train = _batch(5, action=torch.tensor([3, 3, 1, 3, 0]))
    base = build_baseline("action").fit([train])
    held = _batch(8, action=torch.tensor([3, 3, 3, 1, 2, 0, 0, 3]))
    out = base.predict(held)
    assert out.shape == (8, A) and (out.argmax(-1) == 3).all()
    assert _score("action", out, held)["accuracy"] == 0.5  # the share of class 3 held out


def test_unlabelled_training_clips_do_not_vote() -> None:
    mask = {"sentiment": torch.tensor([True, False, False, True])}
    train = _batch(4, mask=mask, sentiment=torch.tensor([2, 0, 0, 2]))
    pred = build_baseline("sentiment").fit([train]).predict(_batch(2))
    assert pred.argmax(-1).tolist() == [2, 2]


@pytest.mark.parametrize(("labels", "flag"), [([0, 0, 1], False), ([1, 1, 0], True)])
def test_moderation_never_or_always_flags(labels: list[int], flag: bool) -> None:
    train = _batch(3, moderation=torch.tensor(labels, dtype=torch.float))
    out = build_baseline("moderation").fit([train]).predict(_batch(4))
    assert out.shape == (4,) and ((out > 0) == flag).all()


def test_qa_majority_answer_per_question_type() -> None:
    # two question slots per type; position q has type q % Q; -1 = unlabelled
    answers = torch.tensor(
        [[0, 5, 9, 14] * 2, [0, 6, 9, 14] * 2, [1, 6, 10, -1] * 2], dtype=torch.long
    )
    train = _batch(3, answers=answers, questions=torch.ones(3, 2 * Q, 3, dtype=torch.long))
    base = build_baseline("qa").fit([train])
    held = _batch(2, answers=answers[:2], questions=torch.ones(2, 2 * Q, 3, dtype=torch.long))
    pred = base.predict(held)
    assert pred.tolist() == [[0, 6, 9, 14] * 2] * 2
    assert _score("qa", pred, held)["accuracy"] == pytest.approx(14 / 16)


def test_caption_is_the_most_common_training_caption() -> None:
    common, other = [1, 5, 6, 2, 0], [1, 7, 8, 2, 0]
    train = _batch(3, caption=torch.tensor([other, common, common]))
    pred = build_baseline("caption").fit([train]).predict(_batch(2))
    assert pred.tolist() == [common, common]


def test_constant_means_report_spearman_zero() -> None:
    train = _batch(4, quality=torch.tensor([0.2, 0.4, 0.6, 0.8]))
    base = build_baseline("quality").fit([train])
    assert base.predict(_batch(3)).tolist() == pytest.approx([0.5] * 3)
    assert base.fill == {"spearman": 0.0}
    frames = _batch(2, t=3, keyframes=torch.tensor([[0.0, 1.0, 0.5], [0.5, 0.5, 0.5]]))
    summary = build_baseline("summary").fit([frames])
    assert summary.predict(_batch(1, t=3)).tolist() == [[0.5, 0.5, 0.5]]
    assert summary.fill == {"spearman": 0.0}


def test_detection_predicts_the_mean_box_of_the_majority_class() -> None:
    boxes = torch.zeros(2, 2, 2, 4)
    boxes[..., 0, :] = torch.tensor([0.1, 0.1, 0.5, 0.5])
    boxes[0, :, 1] = torch.tensor([0.5, 0.5, 0.9, 0.9])
    classes = torch.tensor([[[1, 2], [1, 2]], [[1, -1], [1, -1]]])
    base = build_baseline("detection").fit([_batch(2, boxes=boxes, box_classes=classes)])
    out = base.predict(_batch(3))
    assert out["boxes"].shape == (3, 2, 1, 4)
    assert out["boxes"][0, 0, 0].tolist() == pytest.approx([0.1, 0.1, 0.5, 0.5])
    assert (out["classes"] == 1).all() and (out["scores"] == 1).all()
    held = _batch(2, boxes=boxes, box_classes=classes)
    # class 1 found in every frame (AP 1), class 2 never predicted (AP 0)
    assert _score("detection", base.predict(held), held)["map50"] == pytest.approx(0.5)


def test_segmentation_is_the_majority_pixel_class() -> None:
    seg = torch.zeros(1, 2, 4, 4, dtype=torch.long)
    seg[..., :1, :] = 3  # a quarter of the pixels
    base = build_baseline("segmentation").fit([_batch(1, segmentation=seg)])
    pred = base.predict(_batch(2))
    assert pred.shape == (2, 2, 4, 4) and (pred == 0).all()
    held = _batch(1, segmentation=seg)
    res = _score("segmentation", base.predict(held), held)
    assert res["pixel_accuracy"] == pytest.approx(0.75) and res["miou"] == pytest.approx(0.375)


def test_pose_is_the_mean_visible_position_per_keypoint() -> None:
    p = len(schema.KEYPOINTS)
    kp = torch.zeros(2, 1, p, 2)
    kp[0, 0, 0] = torch.tensor([0.2, 0.4])
    kp[1, 0, 0] = torch.tensor([0.4, 0.6])
    kp[1, 0, 1] = torch.tensor([0.9, 0.9])
    vis = torch.ones(2, 1, p, dtype=torch.bool)
    vis[0, 0, 1] = False  # keypoint 1 only seen in clip 1
    base = build_baseline("pose").fit([_batch(2, t=1, keypoints=kp, keypoint_visible=vis)])
    out = base.predict(_batch(3, t=2))
    assert out.shape == (3, 2, p, 2)
    assert out[0, 0, 0].tolist() == pytest.approx([0.3, 0.5])
    assert out[2, 1, 1].tolist() == pytest.approx([0.9, 0.9])


def test_restoration_is_identity_and_next_frame_copies_the_last_frame() -> None:
    k = 3
    train = _batch(2, next_frames=torch.zeros(2, k, 3, 4, 4), clean=torch.zeros(2, 2, 3, 4, 4))
    bases = fit_baselines(["restoration", "next_frame"], [train])
    held = _batch(2)
    assert torch.equal(bases["restoration"].predict(held), held["video"])
    nxt = bases["next_frame"].predict(held)
    assert nxt.shape == (2, k, 3, 4, 4)
    assert all(torch.equal(nxt[:, i], held["video"][:, -1]) for i in range(k))
    held["modality_mask"][0, 0] = False  # no video: the heads start from zeros, so does this
    assert bases["restoration"].predict(held)[0].abs().sum() == 0


def test_a_baseline_without_labelled_training_clips_refuses_to_predict() -> None:
    mask = {"action": torch.zeros(2, dtype=torch.bool)}
    base = build_baseline("action").fit([_batch(2, mask=mask, action=torch.tensor([1, 1]))])
    assert not base.fitted
    with pytest.raises(UsageError, match="baseline for task 'action'"):
        base.predict(_batch(1))
