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


class _GridEncoder(Encoder):
    """Shared tail: coordinates embedding, token pooling and the pooled vector from a conv grid."""

    modality = "video"

    def __init__(self, dim: int, max_tokens_side: int) -> None:
        super().__init__(dim)
        self.coords = nn.Linear(3, dim)  # absolute (t, y, x) so dense heads can localise
        self.max_tokens_side = max_tokens_side

    def _finish(self, feat: Tensor) -> Encoded:
        b, d, t, h, w = feat.shape
        axes = [torch.linspace(0.0, 1.0, n, device=feat.device) for n in (t, h, w)]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # [t, h, w, 3]
        grid = feat.permute(0, 2, 3, 4, 1) + flat_apply(self.coords, coords.expand(b, t, h, w, 3))
        side = (t, min(h, self.max_tokens_side), min(w, self.max_tokens_side))
        pooled_grid = F.adaptive_avg_pool3d(grid.permute(0, 4, 1, 2, 3), side)
        tokens = pooled_grid.flatten(2).transpose(1, 2)
        return Encoded(tokens=tokens, pooled=grid.mean(dim=(1, 2, 3)), grid=grid)


@ENCODERS.register("conv2p1d")
class Conv2p1d(_GridEncoder):
    """Strided patch stem, then a factorised (2+1)D block: spatial 3x3, temporal 3.

    Output grid is T/t_stride x H/8 x W/8; ~50k parameters at dim 64.
    """

    def __init__(
        self, dim: int = 64, width: int = 32, t_stride: int = 2, max_tokens_side: int = 4
    ) -> None:
        super().__init__(dim, max_tokens_side)
        self.t_stride, self.spatial_stride = t_stride, 8
        self.stem = _conv(3, width, (1, 4, 4), (1, 4, 4), (0, 0, 0))
        self.spatial = _conv(width, width, (1, 3, 3), (1, 2, 2), (0, 1, 1))
        self.temporal = _conv(width, dim, (3, 1, 1), (t_stride, 1, 1), (1, 0, 0))
        self.mix = _conv(dim, dim, (1, 3, 3), (1, 1, 1), (0, 1, 1))

    def forward(self, video: Tensor) -> Encoded:
        x = video.permute(0, 2, 1, 3, 4) * 2.0 - 1.0  # [B, 3, T, H, W] in [-1, 1]
        x = self.temporal(self.spatial(self.stem(x)))
        return self._finish(x + self.mix(x))


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
