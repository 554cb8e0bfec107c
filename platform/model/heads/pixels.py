"""Pixel heads sharing one light decoder: restoration (denoise / deblur-super-resolution /
de-blocking: whatever degradation the clip has) and next-frame generation.

The shared :class:`PixelDecoder` runs once per forward (Opacus ghost clipping forbids calling a
Linear twice); each head then paints its patch per token with one Linear. Both heads predict a
residual on top of the input (restoration) or the last input frame (next frame), so an untrained
head starts at the identity baseline.
"""

from __future__ import annotations

from torch import Tensor, nn

from veilfed.data import schema
from veilfed.model.heads.base import Head, HeadInput, per_sample_mean, unpatchify
from veilfed.model.layers import flat_apply
from veilfed.model.registry import HEADS


class PixelDecoder(nn.Module):
    """Grid features [B, T', H', W', D] -> decoder features [B, T', H', W', pixel_dim]."""

    def __init__(self, dim: int, pixel_dim: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, pixel_dim), nn.GELU())

    def forward(self, grid: Tensor) -> Tensor:
        return flat_apply(self.net, grid)


@HEADS.register("restoration")
class RestorationHead(Head):
    """Clean clip [B, T, 3, H, W] = degraded input + painted residual; L1."""

    task = "restoration"
    requires = ("video",)
    uses_pixels = True

    def __init__(
        self, dim: int, pixel_dim: int = 64, tp: int = 2, patch: int = 8, **_: object
    ) -> None:
        super().__init__(dim)
        self.tp, self.patch = tp, patch
        self.out = nn.Linear(pixel_dim, tp * patch * patch * 3)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, inp: HeadInput) -> Tensor:
        delta = unpatchify(flat_apply(self.out, inp.pixels), self.tp, self.patch, self.patch, 3)
        return inp.input_video() + delta

    def loss(self, output: Tensor, targets: dict[str, Tensor]) -> Tensor:
        return per_sample_mean((output - targets["clean"]).abs()) * 10.0

    def predict(self, output: Tensor) -> Tensor:
        return output.clamp(0.0, 1.0)


@HEADS.register("next_frame")
class NextFrameHead(Head):
    """The ``NEXT_FRAMES`` frames after the clip, painted from the last temporal token slice as a
    residual on the last input frame; L1."""

    task = "next_frame"
    requires = ("video",)
    uses_pixels = True

    def __init__(
        self,
        dim: int,
        pixel_dim: int = 64,
        patch: int = 8,
        frames: int = schema.NEXT_FRAMES,
        **_: object,
    ) -> None:
        super().__init__(dim)
        self.patch, self.frames = patch, frames
        self.out = nn.Linear(pixel_dim, frames * patch * patch * 3)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, inp: HeadInput) -> Tensor:
        last = flat_apply(self.out, inp.pixels[:, -1:])  # [B, 1, H', W', K*p*p*3]
        delta = unpatchify(last, self.frames, self.patch, self.patch, 3)
        return inp.input_video()[:, -1:] + delta

    def loss(self, output: Tensor, targets: dict[str, Tensor]) -> Tensor:
        return per_sample_mean((output - targets["next_frames"]).abs()) * 10.0

    def predict(self, output: Tensor) -> Tensor:
        return output.clamp(0.0, 1.0)
