"""The parts that let heads learn beyond their label-only baselines: order-aware video pooling,
audio trends, 8-bit pixel outputs, the restoration gate and importance levels."""

from __future__ import annotations

import torch
from testkit.model import make_batch, tiny

from veilfed.model import create_model
from veilfed.model.encoders.audio import LogMelConv
from veilfed.model.encoders.video import Conv2p1d, TemporalPool
from veilfed.model.heads.pixels import to_8bit


def test_temporal_pool_tells_a_clip_from_its_reverse() -> None:
    torch.manual_seed(0)
    pool = TemporalPool(dim=8, slots=2)
    grid = torch.randn(2, 5, 3, 3, 8)
    forward, backward = pool(grid), pool(grid.flip(1))
    assert forward.shape == (2, 8)
    assert not torch.allclose(forward, backward, atol=1e-4)  # a plain mean over time is equal
    assert torch.isfinite(pool(grid[:, :1])).all()  # one frame: no slope, still defined


def test_video_encoder_sees_direction_of_motion() -> None:
    torch.manual_seed(0)
    enc = Conv2p1d(dim=16, width=8).eval()
    video = torch.zeros(1, 8, 3, 32, 32)
    for t in range(8):  # a bright square sliding right
        video[0, t, :, 12:20, 4 + 2 * t : 12 + 2 * t] = 1.0
    right = enc(video).pooled
    left = enc(video.flip(1)).pooled
    assert not torch.allclose(right, left, atol=1e-4)
    out = enc(video)
    assert out.tokens.shape[1] == 1 + 4 * 4 * 4  # pooled token + T' x 4 x 4 grid tokens
    assert torch.equal(out.tokens[:, 0], out.pooled)


def test_audio_pooled_tells_rising_from_falling() -> None:
    torch.manual_seed(0)
    enc = LogMelConv(dim=16).eval()
    t = torch.arange(16000) / 16000
    rising = torch.sin(2 * torch.pi * (300 * t + 150 * t**2))[None]
    falling = torch.sin(2 * torch.pi * (600 * t - 150 * t**2))[None]
    a, b = enc(rising), enc(falling)
    assert not torch.allclose(a.pooled, b.pooled, atol=1e-4)
    assert torch.equal(a.tokens[:, 0], a.pooled)  # the pooled vector leads the tokens


def test_to_8bit_keeps_8bit_frames_exactly() -> None:
    frames = torch.randint(0, 256, (2, 3, 4, 4)).float() / 255
    assert torch.equal(to_8bit(frames + 0.4 / 255), frames)
    assert to_8bit(frames * 3 - 1).min() >= 0 and to_8bit(frames * 3 - 1).max() <= 1


def test_closed_restoration_gate_returns_the_input_exactly() -> None:
    torch.manual_seed(0)
    batch = make_batch()
    batch["video"] = (batch["video"] * 255).round() / 255
    model = create_model(tiny(tasks={"restoration": 1.0})).eval()
    head = model.task_heads()["restoration"]
    with torch.no_grad():
        head.out.weight.normal_()  # a painted estimate far from the input
        head.gate.weight.zero_()
        head.gate.bias.fill_(-40.0)
    preds = model.predict(batch)
    assert torch.equal(preds["restoration"], batch["video"])
    with torch.no_grad():
        head.gate.bias.fill_(40.0)
    assert not torch.equal(model.predict(batch)["restoration"], batch["video"])


def test_summary_reports_importance_in_levels() -> None:
    torch.manual_seed(0)
    batch = make_batch()
    model = create_model(tiny(tasks={"summary": 1.0})).eval()
    scores = model.predict(batch)["summary"]
    assert torch.allclose(scores * 10, (scores * 10).round(), atol=1e-5)
