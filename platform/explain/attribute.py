"""Attributions of one target (``veilfed.explain.target``) on one clip, per modality, with captum.

Input: a model in eval mode and a batch of one clip as the dataset makes it (``video`` [1, T, 3,
H, W] in [0, 1], ``audio`` [1, S], ``text`` [1, L] tokens, ``modality_mask``, ``targets``).
Each modality the model has and the clip carries is attributed on its own, the other two held
at the clip's values:

* ``integrated_gradients`` (``captum.attr.IntegratedGradients``, ``n_steps`` points):
  video over its pixels from a baseline of each frame's mean colour (no edges, no objects);
  audio over the log-mel spectrogram its encoder computes (``LayerIntegratedGradients`` on the
  encoder's ``frontend``: time x mel band) from silence; text over each token's embedding
  (``LayerIntegratedGradients`` on the text encoder's ``embed``) from PAD tokens.
* ``occlusion`` (``captum.attr.Occlusion``): the target's drop when a window is replaced by
  the same baselines: video patches of one frame by ``patch`` pixels, audio sixteenths of the
  waveform (time only), text one token at a time.

Every map is a magnitude (absolute values, summed over colour channels or embedding width):
which parts the target depends on, either way. ``attention`` maps come from
``veilfed.explain.attention``. An attribution is computed where the clip is (a node, a data
owner); nothing here talks to a coordinator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from captum.attr import IntegratedGradients, LayerIntegratedGradients, Occlusion
from torch import Tensor

from veilfed.data import schema
from veilfed.data.text import PAD, Tokenizer
from veilfed.errors import UsageError
from veilfed.explain.target import Target

METHODS = ("integrated_gradients", "occlusion", "attention")
AUDIO_SLICES = 16  # occlusion's windows over the waveform


@dataclass
class Attribution:
    """One explanation (module docstring); maps are non-negative, None for an absent modality."""

    target: Target
    method: str
    confidence: float  # the target's probability (or regression value) on the clip
    video: Tensor | None = None  # [T, H, W]
    audio: Tensor | None = None  # [time, bands] (bands = 1 for occlusion)
    text: Tensor | None = None  # [L], PAD positions 0
    tokens: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def frame_shares(self) -> list[float]:
        """Each frame's share of the video attribution."""
        if self.video is None:
            return []
        per = self.video.sum(dim=(1, 2))
        return (per / per.sum().clamp(min=1e-12)).tolist()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "task": self.target.task,
            "class": self.target.label,
            "method": self.method,
            "confidence": round(self.confidence, 4),
        }
        if self.video is not None:
            out["video"] = {"frame_share": [round(v, 4) for v in self.frame_shares()]}
        if self.audio is not None:
            per = self.audio.sum(dim=1)
            share = per / per.sum().clamp(min=1e-12)  # all zero when the target ignores audio
            out["audio"] = {"time_share": [round(v, 4) for v in share.tolist()]}
        if self.text is not None:
            share = self.text / self.text.sum().clamp(min=1e-12)
            out["text"] = {
                "tokens": [
                    {"token": t, "share": round(float(s), 4)}
                    for t, s in zip(self.tokens, share, strict=False)
                    if t
                ]
            }
        return out | self.notes


def expand(batch: dict[str, Any], n: int) -> dict[str, Any]:
    """``batch`` of one clip repeated to ``n`` rows (tensors, nested dicts and lists)."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == 1:
            out[key] = value.expand(n, *value.shape[1:])
        elif isinstance(value, dict):
            out[key] = expand(value, n)
        elif isinstance(value, list) and len(value) == 1:
            out[key] = value * n
        else:
            out[key] = value
    return out


def present(model: Any, batch: dict[str, Any]) -> list[str]:
    """The modalities the model has and the clip carries."""
    mask = batch["modality_mask"][0]
    return [m for i, m in enumerate(schema.MODALITIES) if m in model.modalities and bool(mask[i])]


def _fn(model: Any, batch: dict[str, Any], key: str, target: Target) -> Callable[[Tensor], Tensor]:
    def f(x: Tensor) -> Tensor:
        return target.of(model(expand(batch, x.shape[0]) | {key: x}))

    return f


def video_baseline(video: Tensor) -> Tensor:
    return video.mean(dim=(-1, -2), keepdim=True).expand_as(video).contiguous()


def _video(model: Any, batch: dict[str, Any], target: Target, method: str, cfg: dict) -> Tensor:
    video = batch["video"]
    f = _fn(model, batch, "video", target)
    if method == "integrated_gradients":
        attr = IntegratedGradients(f).attribute(
            video,
            baselines=video_baseline(video),
            n_steps=cfg["steps"],
            internal_batch_size=cfg["chunk"],
        )
    else:
        p = cfg["patch"]
        attr = Occlusion(f).attribute(
            video,
            sliding_window_shapes=(1, 3, p, p),
            strides=(1, 3, p, p),
            baselines=video_baseline(video),
            perturbations_per_eval=cfg["chunk"],
        )
    return attr[0].abs().sum(dim=1).detach()  # [T, H, W]


def _audio(model: Any, batch: dict[str, Any], target: Target, method: str, cfg: dict) -> Tensor:
    audio = batch["audio"]
    f = _fn(model, batch, "audio", target)
    if method == "integrated_gradients":
        frontend = getattr(model.encoders["audio"], "frontend", None)
        if frontend is None:
            raise UsageError(
                "--method integrated_gradients: the audio encoder has no spectrogram frontend "
                "to attribute over; use --method occlusion"
            )
        attr = LayerIntegratedGradients(f, frontend).attribute(
            audio,
            baselines=torch.zeros_like(audio),
            n_steps=cfg["steps"],
            internal_batch_size=cfg["chunk"],
        )
        return attr[0].abs().detach()  # [frames, mels]
    width = audio.shape[1] // AUDIO_SLICES
    attr = Occlusion(f).attribute(
        audio,
        sliding_window_shapes=(width,),
        strides=(width,),
        baselines=0.0,
        perturbations_per_eval=cfg["chunk"],
    )
    used = attr[0, : width * AUDIO_SLICES].abs().detach()
    return used.reshape(AUDIO_SLICES, width).mean(dim=1, keepdim=True)  # [16, 1]


def _text(model: Any, batch: dict[str, Any], target: Target, method: str, cfg: dict) -> Tensor:
    text = batch["text"]
    f = _fn(model, batch, "text", target)
    if method == "integrated_gradients":
        attr = LayerIntegratedGradients(f, model.encoders["text"].embed).attribute(
            text,
            baselines=torch.full_like(text, PAD),
            n_steps=cfg["steps"],
            internal_batch_size=cfg["chunk"],
        )
        scores = attr[0].sum(dim=-1).abs().detach()
    else:
        with torch.no_grad():
            full = f(text)[0]
            scores = torch.zeros(text.shape[1])
            for i in range(text.shape[1]):
                if int(text[0, i]) != PAD:
                    occluded = text.clone()
                    occluded[0, i] = PAD
                    scores[i] = (full - f(occluded)[0]).abs()
    return scores.masked_fill(text[0] == PAD, 0.0)


def attribute(
    model: Any,
    batch: dict[str, Any],
    target: Target,
    method: str = "integrated_gradients",
    steps: int = 24,
    patch: int | None = None,
    chunk: int = 8,
    tokenizer: Tokenizer | None = None,
) -> Attribution:
    """The ``method`` attribution of ``target`` on the clip ``batch`` (module docstring)."""
    if method not in ("integrated_gradients", "occlusion"):
        raise UsageError(f"--method {method!r}: use integrated_gradients, occlusion or attention")
    model.eval()
    h = batch["video"].shape[-1]
    cfg = {"steps": steps, "chunk": chunk, "patch": patch or max(4, h // 8)}
    with torch.no_grad():
        confidence = float(target.confidence(model(batch))[0])
    out = Attribution(target, method, confidence)
    with torch.enable_grad():
        for modality in present(model, batch):
            fn = {"video": _video, "audio": _audio, "text": _text}[modality]
            setattr(out, modality, fn(model, batch, target, method, cfg).float())
    if out.text is not None:
        words = tokenizer or Tokenizer()
        out.tokens = [
            "" if int(i) == PAD else words.decode([int(i)]) for i in batch["text"][0].tolist()
        ]
    return out
