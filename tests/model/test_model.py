"""Model building, masked losses, loss weighting."""

from __future__ import annotations

import pytest
import torch
from testkit.model import make_batch, tiny

from veilfed.data import schema
from veilfed.errors import UsageError
from veilfed.model import create_model, list_registries


def test_list_registries_has_every_kind() -> None:
    regs = list_registries()
    assert set(regs) == {"encoders", "fusions", "heads", "losses", "augmentations", "compressions"}
    assert {"conv2p1d", "logmel_conv", "text_transformer"} <= set(regs["encoders"])
    assert set(regs["losses"]) == {"fixed", "uncertainty", "dwa"}


def test_unknown_fusion_lists_valid_choices() -> None:
    with pytest.raises(UsageError, match="unknown fusion 'nope'; valid: concat, cross_attention"):
        create_model(tiny(fusion="nope"))


def test_task_needing_video_without_video_encoder() -> None:
    with pytest.raises(UsageError, match=r"task 'detection' \(detection\) needs the video encoder"):
        create_model(tiny(encoders={"text": "text_transformer"}, tasks={"detection": 1.0}))


def test_bad_encoder_kwargs_are_a_usage_error() -> None:
    with pytest.raises(UsageError, match="encoder 'conv2p1d': bad arguments"):
        create_model(tiny(encoder_kwargs={"video": {"widht": 8}}))


def test_bad_batch_shape_is_a_usage_error(batch: dict) -> None:
    batch["video"] = batch["video"][:, :, :2]
    with pytest.raises(UsageError, match=r"expected \[B, T, 3, H, W\]"):
        create_model(tiny())(batch)


def test_loss_ignores_unlabelled_samples() -> None:
    torch.manual_seed(0)
    model = create_model(tiny(tasks={"action": 1.0, "quality": 1.0})).eval()
    a, b = make_batch(4), make_batch(4)
    for batch in (a, b):
        batch["target_mask"]["action"][2:] = False
    b["targets"]["action"][2:] = (a["targets"]["action"][2:] + 1) % len(schema.ACTIONS)
    with torch.no_grad():
        total_a, per_a = model.loss(model(a), a)
        total_b, per_b = model.loss(model(b), b)
    assert torch.allclose(per_a["action"], per_b["action"])
    assert torch.allclose(total_a, total_b)
    b["targets"]["action"][0] = (a["targets"]["action"][0] + 1) % len(schema.ACTIONS)
    with torch.no_grad():
        assert not torch.allclose(model.loss(model(b), b)[1]["action"], per_a["action"])


def test_per_sample_loss_means_to_the_batch_loss(batch: dict) -> None:
    model = create_model(tiny())
    out = model(batch)
    per_sample, _ = model.per_sample_loss(out, batch)
    total, _ = model.loss(out, batch)
    assert per_sample.shape == (batch["video"].shape[0],)
    assert torch.allclose(per_sample.mean(), total)


def test_task_weights_scale_the_total(batch: dict) -> None:
    torch.manual_seed(0)
    one = create_model(tiny(tasks={"action": 1.0}))
    torch.manual_seed(0)
    three = create_model(tiny(tasks={"action": 3.0}))
    assert torch.allclose(3 * one.loss(one(batch), batch)[0], three.loss(three(batch), batch)[0])


def test_uncertainty_weighting_learns_log_variances(batch: dict) -> None:
    model = create_model(tiny(tasks={"action": 1.0, "quality": 1.0}, loss_weighting="uncertainty"))
    total, _ = model.loss(model(batch), batch)
    total.backward()
    grad = model.weighting.log_vars.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_dwa_upweights_the_task_whose_loss_falls_slowest() -> None:
    model = create_model(tiny(tasks={"action": 1.0, "quality": 1.0}, loss_weighting="dwa"))
    w = model.weighting
    w.end_epoch(torch.tensor([2.0, 2.0]))
    assert w.current_weights() == {"action": 1.0, "quality": 1.0}  # uniform for two epochs
    w.end_epoch(torch.tensor([1.0, 2.0]))  # action halved, quality flat
    weights = w.current_weights()
    assert weights["quality"] > 1.0 > weights["action"]
    assert sum(weights.values()) == pytest.approx(2.0)


def test_state_dict_round_trip(batch: dict) -> None:
    torch.manual_seed(0)
    a = create_model(tiny()).eval()
    torch.manual_seed(1)
    b = create_model(tiny()).eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        assert torch.allclose(a(batch)["action"], b(batch)["action"])


def test_frames_not_matching_the_temporal_stride() -> None:
    batch = make_batch(2, t=3)
    with pytest.raises(UsageError, match="3 frames; the conv2p1d encoder needs a multiple of 2"):
        create_model(tiny())(batch)
