"""Dataset and collate over any clip source: in memory, plain files or the encrypted store.

A *ClipSource* has ``ids()`` and ``read(clip_id) -> (payload, labels)`` where the payload is MP4
bytes (decoded here, in memory) or an already decoded :class:`~veilfed.data.video.DecodedClip`.
Samples follow docs/contracts.md; targets are rendered from the labels' geometry at the requested
resolution, so restoration, segmentation and next-frame targets are exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from veilfed.data import schema, synth, synth_render
from veilfed.data.files import encode_clip
from veilfed.data.items import split_window_id
from veilfed.data.targets import cue_text, placeholder, real_targets, restoration_pair
from veilfed.data.text import Tokenizer
from veilfed.data.video import DecodedClip, decode
from veilfed.data.windowed import next_frames, window_of
from veilfed.data.windows import decode_window
from veilfed.tasks import TaskSpec, task_spec, task_specs

Sample = dict[str, Any]


class ClipSource(Protocol):
    def ids(self) -> list[str]: ...

    def __contains__(self, clip_id: object) -> bool: ...

    def read(self, clip_id: str) -> tuple[bytes | DecodedClip, dict[str, Any]]: ...


class MemorySource:
    """Clips held in memory, either raw (no codec: fastest) or as MP4 bytes."""

    def __init__(self, clips: Iterable[synth.Clip], encode: bool = False) -> None:
        self._items: dict[str, tuple[bytes | DecodedClip, dict[str, Any]]] = {}
        for clip in clips:
            payload: bytes | DecodedClip
            if encode:
                payload = encode_clip(clip)
            else:
                n = (
                    clip.labels["world"]["frames"]
                    * clip.labels["world"]["sample_rate"]
                    // clip.labels["world"]["fps"]
                )
                audio = clip.audio if clip.audio is not None else np.zeros(n, np.float32)
                payload = DecodedClip(
                    clip.video,
                    audio,
                    clip.audio is not None,
                    float(clip.labels["world"]["fps"]),
                    len(clip.video),
                )
            self._items[clip.clip_id] = (payload, clip.labels)

    @classmethod
    def world(cls, cfg: synth.WorldConfig, n: int, encode: bool = False) -> MemorySource:
        return cls(synth.iter_world(cfg, n), encode=encode)

    def ids(self) -> list[str]:
        return list(self._items)

    def __contains__(self, clip_id: object) -> bool:
        return clip_id in self._items

    def read(self, clip_id: str) -> tuple[bytes | DecodedClip, dict[str, Any]]:
        return self._items[clip_id]


def _resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    if frames.shape[1:3] == (height, width):
        return frames
    t = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    t = torch.nn.functional.interpolate(
        t, size=(height, width), mode="bilinear", antialias=True, align_corners=False
    )
    return t.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def _to_video_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [T, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0


def synthetic_targets(
    labels: dict[str, Any],
    frames: int,
    height: int,
    width: int,
    next_frames: int,
    tokenizer: Tokenizer,
) -> dict[str, torch.Tensor]:
    """Every task's target for a synthetic clip, rendered at (frames, height, width)."""
    objects = labels["objects"]
    boxes = torch.zeros(frames, schema.MAX_OBJECTS, 4)
    box_classes = torch.full((frames, schema.MAX_OBJECTS), -1, dtype=torch.long)
    for i, obj in enumerate(objects):
        boxes[:, i] = torch.tensor(obj["boxes"][:frames])
        box_classes[:, i] = obj["class"]
    inst = torch.from_numpy(
        synth_render.instance_masks(labels, height, width, range(frames))
    ).long()
    class_of_instance = torch.tensor([0] + [o["class"] + 1 for o in objects])
    kp = torch.tensor(labels["keypoints"][:frames], dtype=torch.float32)
    qa = labels["qa"]
    total = labels["world"]["frames"] + labels["world"]["next_frames"]
    future = range(frames, min(frames + next_frames, total))
    return {
        "action": torch.tensor(labels["action"]),
        "sentiment": torch.tensor(labels["sentiment"]),
        "moderation": torch.tensor(float(labels["moderation"])),
        "quality": torch.tensor(float(labels["quality"])),
        "boxes": boxes,
        "box_classes": box_classes,
        "segmentation": class_of_instance[inst],
        "keypoints": kp,
        "keypoint_visible": torch.ones(kp.shape[:2], dtype=torch.bool),
        "caption": torch.tensor(
            tokenizer.encode(labels["caption"], schema.MAX_CAPTION_TOKENS, bos_eos=True)
        ),
        "questions": torch.tensor(
            [tokenizer.encode(q["question"], schema.MAX_QUESTION_TOKENS) for q in qa]
        ),
        "answers": torch.tensor([schema.ANSWERS.index(q["answer"]) for q in qa]),
        "keyframes": torch.tensor(labels["keyframes"][:frames], dtype=torch.float32),
        "clean": _to_video_tensor(synth_render.render(labels, height, width, range(frames))),
        "next_frames": _to_video_tensor(synth_render.render(labels, height, width, future)),
    }


class ClipDataset(Dataset[Sample]):
    """Samples (docs/contracts.md) from a ClipSource at the geometry of ``world``, with targets
    for the declared ``tasks`` (default: the synthetic preset's twelve).

    A synthetic clip carries every preset task's targets; a real clip the targets its labels give
    (:mod:`veilfed.data.targets`) and the self-supervised ones it gives itself: restoration (a
    degraded copy as input) and next frame (the frames after the clip: ``frames + K`` frames are
    decoded at one step and the last K become the target). ``drop_modalities`` simulates a
    client that lacks a modality (zeros + mask off); ``augment`` is applied per sample (see
    :mod:`veilfed.augment`). Prediction reads with ``future=False`` (no next-frame targets to
    decode) and ``by_time=True`` (a window's frames at even time steps of the model's rate).
    """

    def __init__(
        self,
        source: ClipSource,
        world: synth.WorldConfig,
        ids: Sequence[str] | None = None,
        augment: Callable[[Sample], Sample] | None = None,
        drop_modalities: Iterable[str] = (),
        tokenizer: Tokenizer | None = None,
        tasks: Mapping[str, TaskSpec] | None = None,
        future: bool = True,
        by_time: bool = False,
    ) -> None:
        self.source = source
        self.world = world
        self.specs = dict(tasks) if tasks is not None else task_specs(PRESET_WEIGHTS)
        # Tasks a synthetic clip has labels for: the preset's, declared as the preset declares.
        self.synthetic_tasks = frozenset(
            t
            for t, sp in self.specs.items()
            if t in schema.SYNTHETIC_TASKS and _same_task(sp, task_spec(t, 1.0))
        )
        self.next_frames = next_frames(self.specs) if future else 0
        self.span = (world.frames + self.next_frames) / world.fps  # seconds a loader window spans
        self.by_time = by_time  # windows: frames at even time steps (decode_window's by_time)
        self.ids = list(ids) if ids is not None else source.ids()
        self.augment = augment
        self.drop = frozenset(drop_modalities)
        unknown = self.drop - set(schema.MODALITIES)
        if unknown:
            raise ValueError(
                f"unknown modality {sorted(unknown)[0]!r}; valid: {', '.join(schema.MODALITIES)}"
            )
        self.tokenizer = tokenizer or Tokenizer()

    def __len__(self) -> int:
        return len(self.ids)

    def labels(self, index: int) -> dict[str, Any]:
        return self.source.read(self.ids[index])[1]

    def _decode(
        self, cid: str
    ) -> tuple[DecodedClip, np.ndarray, dict[str, Any], np.ndarray, tuple[float, float] | None]:
        """(clip, frames [T(+K), H, W, 3] uint8, labels, frame times in the source file, the
        window's span) of ``cid``: a stored clip, or window k of one (``parent#k``). A stored id
        that itself ends in ``#<digits>`` (ingested before ids were kept free of ``#``) is that
        whole clip."""
        w = self.world
        parent, k = (cid, None) if cid in self.source else split_window_id(cid)
        payload, labels = self.source.read(parent)
        future = 0 if labels.get("synthetic") else self.next_frames
        n = w.frames + future
        if isinstance(payload, DecodedClip):
            clip = payload
            frames = _resize_frames(clip.video, w.height, w.width)
        elif k is not None:
            window = window_of(labels, k, parent, self.span)
            size = (w.height, w.width)
            clip = decode_window(
                payload, window, n, size, w.sample_rate, w.audio_samples, cid, self.by_time
            )
            return clip, clip.video, labels, clip.times, (window.start, window.end)
        else:
            clip = decode(payload, n, (w.height, w.width), w.sample_rate, w.audio_samples, cid)
            frames = clip.video
        picked = np.linspace(0, max(clip.source_frames - 1, 0), n).round()
        return clip, frames, labels, picked / max(clip.source_fps, 1e-6), None

    def __getitem__(self, index: int) -> Sample:
        w = self.world
        cid = self.ids[index]
        clip, frames, labels, times, span = self._decode(cid)
        synthetic = bool(labels.get("synthetic"))
        future = 0 if synthetic else self.next_frames
        modalities = labels.get("modalities", {})
        transcript = cue_text(labels.get("transcript_cues", labels.get("transcript", "")), span)
        present = {
            "video": "video" not in self.drop,
            "audio": clip.has_audio and "audio" not in self.drop,
            "text": bool(transcript.strip())
            and modalities.get("text", True)
            and "text" not in self.drop,
        }
        video = (
            _to_video_tensor(frames)
            if present["video"]
            else torch.zeros(w.frames + future, 3, w.height, w.width)
        )
        audio = (
            torch.from_numpy(clip.audio[: w.audio_samples].copy())
            if present["audio"]
            else torch.zeros(w.audio_samples)
        )
        text = (
            torch.tensor(self.tokenizer.encode(transcript, schema.MAX_TEXT_TOKENS))
            if present["text"]
            else torch.zeros(schema.MAX_TEXT_TOKENS, dtype=torch.long)
        )
        if synthetic:
            targets, target_mask = self._synthetic_targets(labels)
        else:
            video, targets, target_mask = self._real_targets(
                cid, labels, clip.source_fps, times, span, video
            )
        sample: Sample = {
            "clip_id": cid,
            "video": video,
            "audio": audio,
            "text": text,
            "modality_mask": torch.tensor([present[m] for m in schema.MODALITIES]),
            "targets": targets,
            "target_mask": {k: torch.tensor(v) for k, v in target_mask.items()},
            "times": torch.from_numpy(np.asarray(times[: w.frames], dtype=np.float64)),
        }
        return self.augment(sample) if self.augment else sample

    def _synthetic_targets(self, labels: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bool]]:
        w = self.world
        targets = synthetic_targets(
            labels, w.frames, w.height, w.width, w.next_frames, self.tokenizer
        )
        for name, spec in self.specs.items():
            if name not in self.synthetic_tasks:
                targets |= placeholder(spec, w.frames, w.height, w.width)
        return targets, {t: t in self.synthetic_tasks for t in self.specs}

    def _real_targets(
        self,
        cid: str,
        labels: dict[str, Any],
        fps: float,
        times: np.ndarray,
        span: tuple[float, float] | None,
        video: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, Any], dict[str, bool]]:
        """(input video, targets, labelled) of a real clip; see the class docstring."""
        w = self.world
        targets, labelled = real_targets(
            self.specs,
            labels,
            times[: w.frames],
            fps,
            w.height,
            w.width,
            self.tokenizer,
            span=span,
            where=cid,
        )
        future, video = video[w.frames :], video[: w.frames]
        has_video = bool(video.abs().sum() > 0)
        for spec in self.specs.values():
            if spec.kind == "next_frame" and has_video and len(future) >= spec.options["frames"]:
                targets[spec.key()] = future[: spec.options["frames"]]
                labelled[spec.name] = True
            elif spec.kind == "restoration" and has_video:
                video, targets[spec.key()] = restoration_pair(spec, cid, video)
                labelled[spec.name] = True
        return video, targets, labelled


PRESET_WEIGHTS = dict.fromkeys(schema.TASKS, 1.0)


def _same_task(a: TaskSpec, b: TaskSpec) -> bool:
    """Whether ``a`` reads the same targets as ``b`` (weights may differ)."""
    return (a.kind, a.classes, a.targets, a.options) == (b.kind, b.classes, b.targets, b.options)


def collate(samples: Sequence[Sample]) -> dict[str, Any]:
    """Stack samples into a batch (docs/contracts.md); clip ids stay a list."""

    def stack(key: str, group: str | None = None) -> torch.Tensor:
        items = [s[group][key] if group else s[key] for s in samples]
        return torch.stack(items)

    first = samples[0]
    return {
        "clip_id": [s["clip_id"] for s in samples],
        "video": stack("video"),
        "audio": stack("audio"),
        "text": stack("text"),
        "modality_mask": stack("modality_mask"),
        "targets": {k: stack(k, "targets") for k in first["targets"]},
        "target_mask": {k: stack(k, "target_mask") for k in first["target_mask"]},
    }


def in_order(dataset: Sequence[Sample], size: int) -> Iterator[dict[str, Any]]:
    """``dataset`` once, in order, collated in batches of ``size``. Batched by hand: iterating a
    DataLoader draws from torch's global RNG, which would shift a training run's data order."""
    for start in range(0, len(dataset), size):
        yield collate([dataset[i] for i in range(start, min(start + size, len(dataset)))])
