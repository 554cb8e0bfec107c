"""Pixel heads sharing one light decoder: restoration (denoise / deblur-super-resolution /
de-blocking: whatever degradation the clip has) and next-frame generation.

The shared :class:`PixelDecoder` runs once per forward (Opacus ghost clipping forbids calling a
Linear twice); each head then paints its patch per token with one Linear. Both heads blend a
painted frame into the input (restoration) or the last input frame (next frame) with a small
initial mix, so an untrained head starts near the identity / copy-last baseline.

Predictions are 8-bit frames, like the clips they are scored against: ``predict`` rounds to the
nearest of 256 levels, so a change under half a level leaves a pixel exactly as it was.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from veilfed.model.heads.base import Head, HeadInput, per_sample_mean, unpatchify
from veilfed.model.layers import flat_apply
from veilfed.model.registry import HEADS
from veilfed.tasks import TaskSpec


class PixelDecoder(nn.Module):
    """Grid features [B, T', H', W', D] -> decoder features [B, T', H', W', pixel_dim]."""

    def __init__(self, dim: int, pixel_dim: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, pixel_dim), nn.GELU())

    def forward(self, grid: Tensor) -> Tensor:
        return flat_apply(self.net, grid)

    def prunable_widths(self) -> dict[str, list[nn.Module]]:
        """``{"pixel_dim": [its Linear]}`` (see ``Encoder.prunable_widths``)."""
        return {"pixel_dim": [self.net[1]]}


def to_8bit(frames: Tensor) -> Tensor:
    """Frames in [0, 1] rounded to 8-bit levels (k / 255)."""
    return (frames.clamp(0.0, 1.0) * 255.0).round() / 255.0


MIX_INIT = -3.0  # initial per-pixel mix logit: sigmoid(-3) ~ 5 % of the painted frame


def blend(base: Tensor, raw: Tensor) -> Tensor:
    """``base`` [B, T, 3, H, W] moved towards a painted frame: ``raw`` [B, T, 4, H, W] holds the
    painted colour (3 channels, sigmoid) and a per-pixel mix (1 channel, sigmoid).

    A residual painted per patch cannot cancel per-pixel noise; a painted clean patch blended in
    where the input is worse than it (noisy, blurred or blocky pixels, or where an object moves
    next) can.
    """
    paint = torch.sigmoid(raw[:, :, :3])
    mix = torch.sigmoid(raw[:, :, 3:])
    return base + mix * (paint - base)


def _paint_layer(pixel_dim: int, outputs: int) -> nn.Linear:
    """Zero weights; mix bias MIX_INIT so an untrained head stays close to its base frames."""
    layer = nn.Linear(pixel_dim, outputs * 4)
    nn.init.zeros_(layer.weight)
    with torch.no_grad():
        layer.bias.view(outputs, 4).copy_(torch.tensor([0.0, 0.0, 0.0, MIX_INIT]))
    return layer


@HEADS.register("restoration")
class RestorationHead(Head):
    """Clean clip [B, T, 3, H, W]: the degraded input blended with a painted clean estimate
    (:func:`blend`), times a per-clip gate; L1 on the result plus L1 on the painted estimate.

    The gate (a sigmoid of the view's pooled vector) lets the head leave clean clips exactly as
    they are, which a painted estimate alone only approximates: in evaluation a clip whose gate
    is below 1/2 is returned unchanged (an 8-bit frame off by one level on a clean clip would
    cost it tens of dB). The painted estimate has its own
    loss: trained only through the blend, it would get no gradient once gate and mix close,
    which they do early while the painting is still worse than the input.
    Output ``{"frames", "paint", "gate" [B], "input"}``; :meth:`predict` gives the frames.
    """

    requires = ("video",)
    uses_pixels = True

    def __init__(
        self,
        dim: int,
        spec: TaskSpec,
        pixel_dim: int = 64,
        tp: int = 2,
        patch: int = 8,
        **_: object,
    ) -> None:
        super().__init__(dim, spec)
        self.tp, self.patch = tp, patch
        self.out = _paint_layer(pixel_dim, tp * patch * patch)
        self.gate = nn.Linear(dim, 1)

    def forward(self, inp: HeadInput) -> dict[str, Tensor]:
        raw = unpatchify(flat_apply(self.out, inp.pixels), self.tp, self.patch, self.patch, 4)
        video = inp.input_video()
        gate = torch.sigmoid(self.gate(inp.view.pooled))[:, :, None, None, None]
        frames = video + gate * (blend(video, raw) - video)
        return {
            "frames": frames,
            "paint": torch.sigmoid(raw[:, :, :3]),
            "gate": gate[:, 0, 0, 0, 0],
            "input": video,
        }

    def loss(self, output: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
        clean = self.target(targets)
        err = (output["frames"] - clean).abs() + (output["paint"] - clean).abs()
        return per_sample_mean(err) * 10.0

    def predict(self, output: dict[str, Tensor]) -> Tensor:
        """8-bit frames; a clip the gate judges clean (gate < 1/2) is returned as it came."""
        keep = (output["gate"] < 0.5)[:, None, None, None, None]
        return to_8bit(torch.where(keep, output["input"], output["frames"]))


@HEADS.register("next_frame")
class NextFrameHead(Head):
    """The task's ``frames`` frames after the clip, painted from the last temporal token slice and
    blended into the last input frame (:func:`blend`); L1 on the result plus L1 on the painted
    frames (their own loss, for the reason given in :class:`RestorationHead`). Output
    ``{"frames", "paint"}``; :meth:`predict` gives the frames."""

    requires = ("video",)
    uses_pixels = True

    def __init__(
        self, dim: int, spec: TaskSpec, pixel_dim: int = 64, patch: int = 8, **_: object
    ) -> None:
        super().__init__(dim, spec)
        self.patch, self.frames = patch, spec.options["frames"]
        self.out = _paint_layer(pixel_dim, self.frames * patch * patch)

    def forward(self, inp: HeadInput) -> Tensor:
        # select, not slice: channel-pruning tools trace a select through to this layer
        raw = flat_apply(self.out, inp.pixels.select(1, -1)).unsqueeze(1)  # [B, 1, H', W', K*p*p*4]
        raw = unpatchify(raw, self.frames, self.patch, self.patch, 4)
        last = inp.input_video()[:, -1:].expand(-1, self.frames, -1, -1, -1)
        return {"frames": blend(last, raw), "paint": torch.sigmoid(raw[:, :, :3])}

    def loss(self, output: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
        future = self.target(targets)
        err = (output["frames"] - future).abs() + (output["paint"] - future).abs()
        return per_sample_mean(err) * 10.0

    def predict(self, output: dict[str, Tensor]) -> Tensor:
        return to_8bit(output["frames"])
