"""Audio encoders: a log-mel spectrogram front end in torch (buffers only, nothing trainable) and a
small conv stack, optionally followed by transformer blocks."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from veilfed.data import schema
from veilfed.model.encoders.base import Encoded, Encoder
from veilfed.model.layers import Block
from veilfed.model.registry import ENCODERS


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int) -> Tensor:
    """Triangular HTK-mel filters [n_fft // 2 + 1, n_mels]."""

    top = 2595.0 * math.log10(1.0 + sample_rate / 2 / 700.0)
    mels = torch.linspace(0.0, top, n_mels + 2)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    lower, center, upper = hz[:-2], hz[1:-1], hz[2:]
    up = (freqs[:, None] - lower) / (center - lower)
    down = (upper - freqs[:, None]) / (upper - center)
    return torch.clamp(torch.minimum(up, down), min=0.0)


class LogMel(nn.Module):
    """Waveform [B, S] -> log-mel [B, n_mels, frames]; window and filters are buffers."""

    def __init__(self, n_mels: int = 40, n_fft: int = 512, hop: int = 256) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer(
            "filters", mel_filterbank(n_fft, n_mels, schema.SAMPLE_RATE), persistent=False
        )

    def forward(self, audio: Tensor) -> Tensor:
        spec = torch.stft(
            audio, self.n_fft, self.hop, window=self.window, center=True, return_complex=True
        )
        power = spec.abs().pow(2).transpose(1, 2)  # [B, frames, freqs]
        return torch.log(power @ self.filters + 1e-5).transpose(1, 2)


@ENCODERS.register("logmel_conv")
class LogMelConv(Encoder):
    """Log-mel, two strided Conv1d (x4 fewer frames), then ``layers`` transformer blocks.

    The pooled vector is the tokens' mean plus a Linear of their least-squares slope over time:
    a mean alone cannot tell a rising pitch contour from a falling one.
    """

    modality = "audio"

    def __init__(self, dim: int = 64, n_mels: int = 40, layers: int = 0, heads: int = 4) -> None:
        super().__init__(dim)
        self.frontend = LogMel(n_mels)
        self.conv = nn.Sequential(
            nn.Conv1d(n_mels, dim, 3, 2, 1),
            nn.GroupNorm(8 if dim % 8 == 0 else 1, dim),
            nn.GELU(),
            nn.Conv1d(dim, dim, 3, 2, 1),
            nn.GroupNorm(8 if dim % 8 == 0 else 1, dim),
            nn.GELU(),
        )
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.trend = nn.Linear(dim, dim)

    def forward(self, audio: Tensor) -> Encoded:
        x = self.conv(self.frontend(audio)).transpose(1, 2)  # [B, L, D]
        for block in self.blocks:
            x = block(x)
        length = x.shape[1]
        u = torch.linspace(-1.0, 1.0, length, device=x.device) if length > 1 else x.new_zeros(1)
        mean = x.mean(dim=1, keepdim=True)
        slope = ((x - mean) * u.view(1, -1, 1)).sum(dim=1, keepdim=True)
        slope = slope / u.pow(2).sum().clamp(min=1e-6)
        pooled = mean[:, 0] + self.trend(slope)[:, 0]
        # The pooled vector leads the tokens, so token-only fusions see the trend too.
        return Encoded(tokens=torch.cat([pooled.unsqueeze(1), x], dim=1), pooled=pooled)


@ENCODERS.register("logmel_transformer")
class LogMelTransformer(LogMelConv):
    """``logmel_conv`` with one transformer block by default."""

    def __init__(self, dim: int = 64, n_mels: int = 40, layers: int = 1, heads: int = 4) -> None:
        super().__init__(dim, n_mels, layers, heads)
