"""Real encoded videos for tests of the own-videos path: a scene you can see
(:mod:`veilfed.data.example_videos`), a tone you can hear at a known time, an optional audio
track."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from veilfed.data import example_videos, video

FPS, RATE = example_videos.FPS, example_videos.RATE


def class_clip(cls: str, seed: int, frames: int = 16, size: int = 32, audio: bool = True) -> bytes:
    """An MP4 of a clip of scene ``cls`` ("cartoon" or "street")."""
    return example_videos.object_clip(cls, seed, frames, size, audio)[0]


def write_class_videos(
    folder: Path, per_class: int, classes: tuple[str, ...] = ("cartoon", "street"), **kw: object
) -> dict[str, str]:
    """``per_class`` MP4s of each class in ``folder``; ``{file name: class}``."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = {}
    for i in range(per_class):
        for j, cls in enumerate(classes):
            name = f"{cls}-{i:02d}.mp4"
            (folder / name).write_bytes(class_clip(cls, seed=100 * j + i, **kw))  # type: ignore[arg-type]
            labels[name] = cls
    return labels


def tone_clip(seconds: float, tone: tuple[float, float], size: int = 32) -> bytes:
    """Dark frames with a bright block and a 1 kHz tone during ``tone`` = (start, end) s."""
    frames = int(seconds * FPS)
    t = np.arange(frames) / FPS
    clip = np.full((frames, size, size, 3), 20, np.uint8)
    clip[(t >= tone[0]) & (t < tone[1])] = 230
    s = np.arange(int(seconds * RATE)) / RATE
    sound = np.where((s >= tone[0]) & (s < tone[1]), 0.5 * np.sin(2 * np.pi * 1000 * s), 0.0)
    return video.encode_mp4(clip, sound.astype(np.float32), FPS, RATE)


def tree_digest(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: a store before and after must be equal."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }
