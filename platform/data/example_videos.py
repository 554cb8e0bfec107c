"""A small folder of real videos with labels in the formats people have, to try the own-videos
path without a data set at hand (``veilfed data example --out DIR``).

Each clip is an H.264 + AAC MP4 of a coloured object moving over grey noise, with a quiet hum:
a ``ball`` (red) in the ``cartoon`` clips, a ``car`` (blue) in the ``street`` clips. Written
beside them:

* ``labels.csv``: ``file,scene`` with the class of each clip (a classification task);
* ``boxes.json``: COCO boxes of the object on every second frame (a detection task), each image
  naming its video and timestamp;
* ``subtitles/<stem>.vtt``: a WebVTT transcript per clip (the text modality).

``experiments/own_videos.toml`` and ``experiments/own_boxes.toml`` declare the matching tasks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from veilfed.data import video
from veilfed.errors import UsageError

FPS = 8
RATE = 16_000
SCENES = {"cartoon": ("ball", (230, 60, 40)), "street": ("car", (40, 90, 220))}
OBJECTS = tuple(obj for obj, _ in SCENES.values())


def object_clip(
    scene: str, seed: int, frames: int = 16, size: int = 32, audio: bool = True
) -> tuple[bytes, list[list[float]]]:
    """(MP4 bytes, the object's box per frame as normalised xyxy) of one clip of ``scene``."""
    rng = np.random.default_rng(seed)
    clip = rng.integers(60, 120, (frames, size, size, 3)).astype(np.uint8)
    side = size // 3
    x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
    boxes = []
    for t in range(frames):
        x = (x0 + t) % (size - side)
        clip[t, y0 : y0 + side, x : x + side] = SCENES[scene][1]
        boxes.append([x / size, y0 / size, (x + side) / size, (y0 + side) / size])
    sound = None
    if audio:
        n = frames * RATE // FPS
        sound = (0.05 * np.sin(2 * np.pi * 220 * np.arange(n) / RATE)).astype(np.float32)
    return video.encode_mp4(clip, sound, FPS, RATE), boxes


def write_example(out: str | Path, per_scene: int = 10, frames: int = 16, size: int = 32) -> dict:
    """Write ``per_scene`` clips of each scene and their labels into a new directory ``out``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out}: exists and is not empty; choose a new --out directory")
    videos, subs = out / "videos", out / "subtitles"
    videos.mkdir(parents=True)
    subs.mkdir()
    rows, images, annotations = [], [], []
    for i in range(per_scene):
        for j, scene in enumerate(SCENES):
            name = f"{scene}-{i:02d}.mp4"
            data, boxes = object_clip(scene, seed=100 * j + i, frames=frames, size=size)
            (videos / name).write_bytes(data)
            rows.append(f"{name},{scene}")
            obj = SCENES[scene][0]
            (subs / f"{Path(name).stem}.vtt").write_text(
                f"WEBVTT\n\n00:00.000 --> 00:01.000\nlook at the {obj}\n"
            )
            for t in range(0, frames, 2):
                images.append(_image(len(images) + 1, name, t, size))
                annotations.append(
                    _box(len(annotations) + 1, images[-1]["id"], obj, boxes[t], size)
                )
    (out / "labels.csv").write_text("file,scene\n" + "\n".join(rows) + "\n")
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(OBJECTS)]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (out / "boxes.json").write_text(json.dumps(coco, indent=1))
    return {"out": str(out), "videos": len(rows), "annotated_frames": len(images)}


def _image(image_id: int, name: str, frame: int, size: int) -> dict[str, Any]:
    return {"id": image_id, "video": name, "timestamp": frame / FPS, "width": size, "height": size}


def _box(ann_id: int, image_id: int, obj: str, box: list[float], size: int) -> dict[str, Any]:
    x0, y0, x1, y1 = (v * size for v in box)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": OBJECTS.index(obj) + 1,
        "bbox": [x0, y0, x1 - x0, y1 - y0],
    }
