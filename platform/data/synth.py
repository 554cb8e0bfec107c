"""A seeded synthetic multimodal world with exact ground truth for every task veilfed learns.

Rules of the world (each clip is a pure function of ``(WorldConfig.seed, index)``):

* **Video.** A background gradient whose palette is warm, neutral or cool; one *main object*
  (circle, square, triangle or diamond, in one of six colours) moving by an *action*
  (static, left, right, up, down, rotate, grow, shrink, bounce); 0–2 static *distractor* objects of
  other classes; a grey stick *figure* with 7 keypoints waving its arms; on some clips a red "X"
  forbidden symbol appears in a corner part-way through. The clip may be degraded (blur, noise or
  8×8 blocking) at a known level; the clean clip is the restoration target.
* **Audio** (16 kHz mono). A tone whose base pitch encodes the main object's class, pulsed at a
  rhythm that encodes the action, with a pitch contour (rising, flat, falling) that carries one
  sentiment cue; a spoken forbidden word is a 1.2 kHz buzz.
* **Text.** A transcript that mentions colour, class and action each only some of the time,
  always carries a sentiment word, and may contain the forbidden word.
* **Sentiment** is the sign of palette + pitch contour + word cue (each −1, 0 or +1), so no single
  modality can get it fully right: fusion must matter.
* **Moderation** is on when the symbol is shown or the forbidden word is said.
* **Quality** is ``1 − 0.8 · level`` for a degraded clip, 1 for a clean one.
* **QA**: colour of the main object, number of objects, direction (action), forbidden content.
* **Summary**: per-frame importance from the main object's motion plus the symbol's appearance.
* **Next frames**: the world keeps evolving for ``next_frames`` frames after the clip.

Labels store geometry normalised to [0, 1], so :func:`~veilfed.data.synth_render.render` and
:func:`~veilfed.data.synth_render.instance_masks` re-create clean frames and masks exactly at any
resolution: the sidecar is the whole ground truth. The labels are drawn in
:mod:`veilfed.data.synth_labels`, the media rendered from them in :mod:`veilfed.data.synth_render`.
Per-modality noise and missing modalities are configurable in :class:`WorldConfig`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from veilfed.data import schema
from veilfed.data.synth_labels import make_labels
from veilfed.data.synth_render import degrade, render, synthesize_audio, word_span
from veilfed.errors import UsageError

AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


@dataclass(frozen=True)
class WorldConfig:
    """Size, seed, noise and missing-modality knobs of a synthetic world."""

    frames: int = schema.DEFAULT_FRAMES
    height: int = schema.DEFAULT_SIZE
    width: int = schema.DEFAULT_SIZE
    fps: int = schema.DEFAULT_FPS
    sample_rate: int = schema.SAMPLE_RATE
    next_frames: int = schema.NEXT_FRAMES
    seed: int = 0
    video_noise: float = 0.0  # extra pixel noise std (0-1 scale) on top of degradation
    audio_noise: float = 0.02  # additive noise std on the waveform
    text_noise: float = 0.1  # probability a transcript word is replaced by a random word
    p_missing_audio: float = 0.0
    p_missing_text: float = 0.0
    p_degraded: float = 0.5
    p_forbidden: float = 0.2

    def __post_init__(self) -> None:
        for name in ("frames", "height", "width", "fps"):
            if getattr(self, name) < 1:
                raise UsageError(f"world.{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:  # numpy seeds are non-negative
            raise UsageError(f"world.seed must be >= 0, got {self.seed}")
        if self.height % 2 or self.width % 2 or self.height < 16 or self.width < 16:
            raise UsageError(
                f"world size {self.height}x{self.width}: height and width must be even and >= 16"
            )
        if self.sample_rate not in AAC_RATES:
            raise UsageError(
                f"world.sample_rate {self.sample_rate} is not an AAC rate; use one of {AAC_RATES}"
            )
        for name in (
            "p_missing_audio",
            "p_missing_text",
            "p_degraded",
            "p_forbidden",
            "text_noise",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"world.{name} must be in [0, 1], got {getattr(self, name)}")

    @property
    def audio_samples(self) -> int:
        return self.frames * self.sample_rate // self.fps

    @property
    def clip_seconds(self) -> float:
        """The time one clip spans: ``frames`` at ``fps`` (its audio is that long too)."""
        return self.frames / self.fps

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "world") -> WorldConfig:
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise UsageError(f"{source}: unknown field {unknown[0]!r}; valid: {', '.join(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Clip:
    """One generated clip: degraded frames shown to the model, audio, transcript, labels."""

    clip_id: str
    video: np.ndarray  # uint8 [T, H, W, 3]
    audio: np.ndarray | None  # float32 [S] or None when the clip has no audio stream
    labels: dict[str, Any]
    # samples (start, stop) of the spoken forbidden word in ``audio``; None when not said
    word_span: tuple[int, int] | None = None


def generate_clip(cfg: WorldConfig, index: int) -> Clip:
    """The clip ``index`` of world ``cfg``: same inputs, same bytes of ground truth and media."""
    labels = make_labels(cfg, index)
    rng = np.random.default_rng([cfg.seed, index, 1])
    frames = render(labels, cfg.height, cfg.width)
    frames = degrade(frames, labels["degradation"], labels["degradation_level"], rng)
    if cfg.video_noise > 0:
        noisy = frames.astype(np.float32) + rng.normal(0, 255 * cfg.video_noise, frames.shape)
        frames = noisy.clip(0, 255).astype(np.uint8)
    audio, span = None, None
    if labels["modalities"]["audio"]:
        span = word_span(labels, cfg.sample_rate, cfg.audio_samples, rng)
        audio = synthesize_audio(
            labels, cfg.sample_rate, cfg.audio_samples, cfg.audio_noise, rng, span
        )
    return Clip(labels["clip_id"], frames, audio, labels, span)


def iter_world(cfg: WorldConfig, n: int, start: int = 0) -> Iterator[Clip]:
    """Clips ``start .. start + n - 1`` of the world, generated lazily."""
    for index in range(start, start + n):
        yield generate_clip(cfg, index)
