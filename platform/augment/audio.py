"""Waveform augmentations (mono 16 kHz ``audio [S]`` in [-1, 1]); missing audio stays silent.

SpecAugment's two masks are applied on the waveform so they work with any audio front end:
time masking zeroes short spans, frequency masking removes a band with an FFT band-stop (the
same effect as masking spectrogram rows, without the model having to know about it). Shifts are
kept short (default 0.1 s) so speech stays aligned with the action on screen.
"""

from __future__ import annotations

import torch

from veilfed.augment.registry import AUGMENTATIONS, Augmentation, Sample, present
from veilfed.data.schema import MODALITIES, SAMPLE_RATE
from veilfed.errors import UsageError

_AUDIO = MODALITIES.index("audio")


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def _check(name: str, ok: bool, rule: str) -> None:
    if not ok:
        raise UsageError(f"augmentation {name}: {rule}")


class _AudioAugmentation(Augmentation):
    def apply(self, sample: Sample) -> Sample:
        if present(sample, _AUDIO):
            sample["audio"] = self.wave(sample["audio"]).clamp(-1, 1)
        return sample

    def wave(self, audio: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@AUGMENTATIONS.register("audio_gain")
class AudioGain(_AudioAugmentation):
    """Scale loudness by a uniform gain in ``[min_db, max_db]`` decibels."""

    def __init__(self, min_db: float = -6.0, max_db: float = 6.0, p: float = 0.5) -> None:
        super().__init__(p)
        _check("audio_gain", min_db <= max_db, "min_db must be <= max_db")
        self.min_db, self.max_db = min_db, max_db

    def wave(self, audio: torch.Tensor) -> torch.Tensor:
        return audio * 10 ** (_uniform(self.min_db, self.max_db) / 20)


@AUGMENTATIONS.register("audio_shift")
class AudioShift(_AudioAugmentation):
    """Delay or advance by up to ``max_seconds``, padding with silence."""

    def __init__(self, max_seconds: float = 0.1, p: float = 0.5) -> None:
        super().__init__(p)
        _check("audio_shift", 0 <= max_seconds <= 1, "max_seconds must be in [0, 1]")
        self.max_seconds = max_seconds

    def wave(self, audio: torch.Tensor) -> torch.Tensor:
        limit = int(self.max_seconds * SAMPLE_RATE)
        shift = int(torch.randint(-limit, limit + 1, ()))
        out = torch.zeros_like(audio)
        if shift >= 0:
            out[shift:] = audio[: audio.numel() - shift]
        else:
            out[:shift] = audio[-shift:]
        return out


@AUGMENTATIONS.register("audio_noise")
class AudioNoise(_AudioAugmentation):
    """Add white noise at a signal-to-noise ratio drawn from ``[min_snr_db, max_snr_db]``."""

    def __init__(self, min_snr_db: float = 10.0, max_snr_db: float = 30.0, p: float = 0.5) -> None:
        super().__init__(p)
        _check("audio_noise", min_snr_db <= max_snr_db, "min_snr_db must be <= max_snr_db")
        self.min_snr_db, self.max_snr_db = min_snr_db, max_snr_db

    def wave(self, audio: torch.Tensor) -> torch.Tensor:
        power = audio.pow(2).mean().clamp_min(1e-8)
        noise_power = power / 10 ** (_uniform(self.min_snr_db, self.max_snr_db) / 10)
        return audio + torch.randn_like(audio) * noise_power.sqrt()


@AUGMENTATIONS.register("time_mask")
class TimeMask(_AudioAugmentation):
    """SpecAugment time masking: zero ``masks`` spans of up to ``max_seconds`` each."""

    def __init__(self, max_seconds: float = 0.1, masks: int = 2, p: float = 0.5) -> None:
        super().__init__(p)
        _check("time_mask", max_seconds >= 0 and masks >= 0, "max_seconds and masks must be >= 0")
        self.max_seconds, self.masks = max_seconds, masks

    def wave(self, audio: torch.Tensor) -> torch.Tensor:
        out = audio.clone()
        n = audio.numel()
        for _ in range(self.masks):
            width = int(torch.randint(0, min(int(self.max_seconds * SAMPLE_RATE), n) + 1, ()))
            start = int(torch.randint(0, n - width + 1, ()))
            out[start : start + width] = 0
        return out


@AUGMENTATIONS.register("freq_mask")
class FrequencyMask(_AudioAugmentation):
    """SpecAugment frequency masking as an FFT band-stop of up to ``max_hz`` wide per mask."""

    def __init__(self, max_hz: float = 1000.0, masks: int = 1, p: float = 0.5) -> None:
        super().__init__(p)
        _check(
            "freq_mask",
            0 <= max_hz <= SAMPLE_RATE / 2 and masks >= 0,
            f"max_hz must be in [0, {SAMPLE_RATE // 2}] and masks >= 0",
        )
        self.max_hz, self.masks = max_hz, masks

    def wave(self, audio: torch.Tensor) -> torch.Tensor:
        spec = torch.fft.rfft(audio)
        bins = spec.numel()
        hz_per_bin = SAMPLE_RATE / 2 / max(bins - 1, 1)
        for _ in range(self.masks):
            width = int(torch.randint(0, int(self.max_hz / hz_per_bin) + 1, ()))
            width = min(width, bins)
            start = int(torch.randint(0, bins - width + 1, ()))
            spec[start : start + width] = 0
        return torch.fft.irfft(spec, n=audio.numel())
