"""Video encoders: a small (2+1)D conv net sized for 2 CPU cores, and torchvision's r2plus1d_18.

GroupNorm everywhere (BatchNorm mixes samples, which breaks per-sample gradients and DP). Every conv
is a Conv3d over [B, C, T, H, W], so Opacus sees the real batch dim (never B*T).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from veilfed.errors import UsageError
from veilfed.model.encoders.base import Encoded, Encoder
from veilfed.model.layers import flat_apply
from veilfed.model.registry import ENCODERS


def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


def _conv(cin: int, cout: int, kernel: tuple, stride: tuple, padding: tuple) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, kernel, stride, padding),
        nn.GroupNorm(_groups(cout), cout),
        nn.GELU(),
    )


class TemporalPool(nn.Module):
    """Order-aware clip summary of a grid: global average pooling keeps what is in a clip but not
    where it goes, so it cannot tell left from right or grow from shrink.

    Per frame, ``slots`` learned spatial softmaxes give an attention-pooled feature and a
    soft-argmax location (x, y) per slot; over time each slot's [feature, location] is summarised
    by its mean, its least-squares slope against time (direction, growth) and its mean absolute
    deviation from that line (oscillation: bounce, rotation). One Linear maps the summary to
    ``dim``. Works for any number of frames (one frame: slope and deviation are zero).
    """

    def __init__(self, dim: int, slots: int = 4) -> None:
        super().__init__()
        self.slots = slots
        self.logits = nn.Linear(dim, slots)
        self.proj = nn.Linear(3 * slots * (dim + 2), dim)

    def forward(self, grid: Tensor) -> Tensor:
        b, t, h, w, d = grid.shape
        flat = grid.reshape(b, t, h * w, d)
        attn = torch.softmax(flat_apply(self.logits, flat), dim=2)  # [B, T, HW, S]
        feats = torch.einsum("btls,btld->btsd", attn, flat)
        ys = (torch.arange(h, device=grid.device) + 0.5) / h
        xs = (torch.arange(w, device=grid.device) + 0.5) / w
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        cells = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)  # [HW, 2]
        where = torch.einsum("btls,lc->btsc", attn, cells)
        track = torch.cat([feats, where], dim=-1)  # [B, T, S, D + 2]
        u = torch.linspace(-1.0, 1.0, t, device=grid.device) if t > 1 else grid.new_zeros(1)
        u = u.view(1, t, 1, 1)
        mean = track.mean(dim=1, keepdim=True)
        slope = ((track - mean) * u).sum(dim=1, keepdim=True) / u.pow(2).sum().clamp(min=1e-6)
        dev = (track - mean - slope * u).abs().mean(dim=1, keepdim=True)
        summary = torch.cat([mean, slope, dev], dim=1).reshape(b, 1, -1)
        return flat_apply(self.proj, summary)[:, 0]


def degradation_stats(video: Tensor, period: int = 8) -> Tensor:
    """Parameter-free clip statistics that reveal noise, blur and blocking: the log mean absolute
    first and second differences between neighbouring pixels, horizontally and vertically, at each
    pixel phase modulo ``period`` (blocking concentrates the differences on block borders; noise
    raises them everywhere, blur lowers them). ``video`` [B, 3, T, H, W]; returns
    [B, 4 * period]."""
    feats = []
    for axis in (-1, -2):
        first = video.diff(dim=axis).abs()
        second = video.diff(n=2, dim=axis).abs()
        for d in (first, second):
            d = d.mean(dim=(1, 2, -1 if axis == -2 else -2))  # [B, positions along axis]
            n = d.shape[1] // period * period
            if n == 0:
                feats.append(d.mean(dim=1, keepdim=True).expand(-1, period))
                continue
            feats.append(d[:, :n].reshape(d.shape[0], -1, period).mean(dim=1))
    return torch.log(torch.cat(feats, dim=1) + 1e-3)


def _pool_to(x: Tensor, side: tuple[int, int, int]) -> Tensor:
    """``adaptive_avg_pool3d(x, side)``, as a plain average pool where ``side`` divides the
    input (the same numbers, and an op every exporter and runtime has)."""
    size = tuple(x.shape[2:])
    if size == side:
        return x
    if all(n % s == 0 for n, s in zip(size, side, strict=True)):
        kernel = tuple(n // s for n, s in zip(size, side, strict=True))
        return F.avg_pool3d(x, kernel_size=kernel, stride=kernel)
    return F.adaptive_avg_pool3d(x, side)


class _GridEncoder(Encoder):
    """Shared tail: coordinates embedding, token pooling and the pooled vector from a conv grid.

    The pooled vector is the grid's average plus an order-aware :class:`TemporalPool` summary;
    the tokens are the pooled vector followed by the grid pooled to at most ``max_tokens_side``.
    """

    modality = "video"

    def __init__(self, dim: int, max_tokens_side: int, slots: int = 4) -> None:
        super().__init__(dim)
        self.coords = nn.Linear(3, dim)  # absolute (t, y, x) so dense heads can localise
        self.max_tokens_side = max_tokens_side
        self.temporal_pool = TemporalPool(dim, slots)

    def _finish(self, feat: Tensor, extra: Tensor | None = None) -> Encoded:
        """``extra`` [B, D]: encoder-specific clip statistics added to the pooled vector."""
        b, d, t, h, w = feat.shape
        axes = [torch.linspace(0.0, 1.0, n, device=feat.device) for n in (t, h, w)]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # [t, h, w, 3]
        grid = feat.permute(0, 2, 3, 4, 1) + flat_apply(self.coords, coords.expand(b, t, h, w, 3))
        side = (t, min(h, self.max_tokens_side), min(w, self.max_tokens_side))
        pooled_grid = _pool_to(grid.permute(0, 4, 1, 2, 3), side)
        tokens = pooled_grid.flatten(2).transpose(1, 2)
        pooled = grid.mean(dim=(1, 2, 3)) + self.temporal_pool(grid)
        if extra is not None:
            pooled = pooled + extra
        # The pooled vector leads the tokens, so token-only fusions see the clip summary too.
        tokens = torch.cat([pooled.unsqueeze(1), tokens], dim=1)
        return Encoded(tokens=tokens, pooled=pooled, grid=grid)


@ENCODERS.register("conv2p1d")
class Conv2p1d(_GridEncoder):
    """Strided patch stem, then a factorised (2+1)D block: spatial 3x3, temporal 3.

    The stem sees each frame and, with ``motion``, its difference to the previous frame (zero for
    the first): where things move and where something appears is then local evidence for every
    head instead of something the temporal conv must rediscover. The stem's per-channel log
    energy (before its GroupNorm, which normalises it away per sample) and the input's
    :func:`degradation_stats` are added to the pooled vector: noise, blur and blocking change
    exactly these high-frequency statistics, which quality and the restoration gate read.

    Output grid is T/t_stride x H/spatial_stride x W/spatial_stride (spatial_stride 4 or 8).
    """

    def __init__(
        self,
        dim: int = 64,
        width: int = 32,
        t_stride: int = 2,
        max_tokens_side: int = 4,
        motion: bool = True,
        slots: int = 4,
        spatial_stride: int = 8,
    ) -> None:
        super().__init__(dim, max_tokens_side, slots)
        if spatial_stride not in (4, 8):
            raise UsageError(f"conv2p1d spatial_stride {spatial_stride}: use 4 or 8")
        self.t_stride, self.spatial_stride = t_stride, spatial_stride
        self.motion = motion
        self.stem_conv = nn.Conv3d(6 if motion else 3, width, (1, 4, 4), (1, 4, 4))
        self.stem_act = nn.Sequential(nn.GroupNorm(_groups(width), width), nn.GELU())
        self.energy = nn.Linear(width, dim)
        self.degradation = nn.Linear(4 * 8, dim)
        step = spatial_stride // 4
        self.spatial = _conv(width, width, (1, 3, 3), (1, step, step), (0, 1, 1))
        self.temporal = _conv(width, dim, (3, 1, 1), (t_stride, 1, 1), (1, 0, 0))
        self.mix = _conv(dim, dim, (1, 3, 3), (1, 1, 1), (0, 1, 1))

    def prunable_widths(self) -> dict[str, list[nn.Module]]:
        return {"width": [self.stem_conv, self.spatial[0]]}

    def forward(self, video: Tensor) -> Encoded:
        x = video.permute(0, 2, 1, 3, 4) * 2.0 - 1.0  # [B, 3, T, H, W] in [-1, 1]
        stats = self.degradation(degradation_stats(x))
        if self.motion:
            diff = F.pad(x[:, :, 1:] - x[:, :, :-1], (0, 0, 0, 0, 1, 0))
            x = torch.cat([x, diff], dim=1)
        stem = self.stem_conv(x)
        energy = self.energy(torch.log(stem.pow(2).mean(dim=(2, 3, 4)) + 1e-4))
        x = self.temporal(self.spatial(self.stem_act(stem)))
        return self._finish(x + self.mix(x), energy + stats)


class _OutOfPlace(nn.Module):
    """torchvision's BasicBlock with ``out + residual`` instead of ``out += residual``: Opacus'
    backward hooks forbid in-place changes to a hooked module's output."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.conv1, self.conv2, self.downsample = block.conv1, block.conv2, block.downsample

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(self.conv2(self.conv1(x)) + residual)


@ENCODERS.register("r2plus1d_18")
class R2Plus1D18(_GridEncoder):
    """torchvision r2plus1d_18 with BatchNorm swapped for GroupNorm; weights only from a local file.

    Much heavier than ``conv2p1d`` (31M parameters): for experiments with real videos, not CI.
    """

    def __init__(
        self, dim: int = 64, weights_path: str | None = None, max_tokens_side: int = 4
    ) -> None:
        super().__init__(dim, max_tokens_side)
        from opacus.validators import ModuleValidator
        from torchvision.models.video import r2plus1d_18

        net = r2plus1d_18(weights=None)
        if weights_path is not None:
            path = Path(weights_path)
            if not path.is_file():
                raise UsageError(f"r2plus1d_18 weights_path {path}: no such file")
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        net = ModuleValidator.fix(net)  # BatchNorm3d -> GroupNorm
        for module in net.modules():  # in-place ReLU breaks Opacus' backward hooks
            if isinstance(module, nn.ReLU):
                module.inplace = False
        layers = [
            nn.Sequential(*map(_OutOfPlace, layer))
            for layer in (net.layer1, net.layer2, net.layer3, net.layer4)
        ]
        self.body = nn.Sequential(net.stem, *layers)
        self.proj = nn.Conv3d(512, dim, 1)
        self.t_stride, self.spatial_stride = 8, 16

    def forward(self, video: Tensor) -> Encoded:
        x = video.permute(0, 2, 1, 3, 4)
        return self._finish(self.proj(self.body(x)))
