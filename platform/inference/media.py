"""Files a prediction writes under ``--out``: overlays, restored and predicted frames, summaries.

Layout: ``OUT/<video stem>/window<k>-<task>.png`` (``<stem>-2``, ... for a second source of that
stem, or when the folder exists) (boxes, masks and keypoints drawn on the
window's middle frame, scaled up to at least :data:`MIN_SIDE` pixels), ``window<k>-<task>.mp4``
(a restoration task's restored frames, a next-frame task's predicted frames) and
``summary-<task>.mp4`` (a frame-scores task's keyframes over the whole video). Every file is
written atomically and never replaces one the command did not create (``overwrite=False``).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from veilfed.data.video import encode_mp4
from veilfed.io import write_bytes_atomic
from veilfed.tasks import TaskSpec

MIN_SIDE = 256
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48)]
PALETTE += [(145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190)]
DRAWN = ("detection", "segmentation", "keypoints")
MOVIES = ("restoration", "next_frame")


def _uint8(frames: torch.Tensor) -> np.ndarray:
    """[T, 3, H, W] in [0, 1] -> uint8 [T, H, W, 3]."""
    return (frames.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def _write(path: Path, data: bytes) -> str:
    write_bytes_atomic(path, data, overwrite=False)
    return str(path)


def window_files(
    folder: Path, k: int, sample: dict[str, Any], preds: dict[str, Any], specs: dict
) -> list[str]:
    """Write window ``k``'s files into the video's ``folder`` (module docstring); their paths."""
    written = []
    middle = sample["video"].shape[0] // 2
    for task, pred in preds.items():
        spec = specs[task]
        stem = folder / f"window{k:03d}-{task}"
        if spec.kind in DRAWN:
            image = overlay(spec, _uint8(sample["video"][middle : middle + 1])[0], pred, middle)
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            written.append(_write(stem.with_suffix(".png"), buf.getvalue()))
        elif spec.kind in MOVIES:
            frames = _uint8(pred.float())
            data = encode_mp4(even_sides(frames), None, _fps(sample))
            written.append(_write(stem.with_suffix(".mp4"), data))
    return written


def summary_clip(folder: Path, task: str, frames: list[torch.Tensor], fps: int) -> str | None:
    """The keyframes of a video as one MP4 in its ``folder`` (its path); None without any."""
    if not frames:
        return None
    data = encode_mp4(even_sides(_uint8(torch.stack(frames))), None, max(1, fps // 4))
    return _write(folder / f"summary-{task}.mp4", data)


def _fps(sample: dict[str, Any]) -> int:
    times = sample["times"]
    if len(times) < 2:
        return 8
    step = float(times[-1] - times[0]) / (len(times) - 1)
    return max(1, round(1.0 / step)) if step > 0 else 8


def unique_folder(out: Path, name: str, taken: Iterable[Path] = (), suffix: str = "") -> Path:
    """``out/<stem of name><suffix>``, or ``...-2``, ... when ``taken`` has it or it exists."""
    stem = (Path(name).stem.replace("#", "_") or "video") + suffix
    taken = set(taken)
    folder, n = out / stem, 1
    while folder in taken or folder.exists():
        n += 1
        folder = out / f"{stem}-{n}"
    return folder


def even_sides(frames: np.ndarray) -> np.ndarray:
    """H.264 with yuv420p needs even sides: pad by one edge row / column where odd."""
    _, h, w, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def overlay(spec: TaskSpec, frame: np.ndarray, pred: Any, i: int) -> Image.Image:
    """Frame ``i``'s prediction of a detection, segmentation or keypoints task drawn on it."""
    h, w = frame.shape[:2]
    scale = max(1, -(-MIN_SIDE // min(h, w)))
    image = Image.fromarray(frame).resize((w * scale, h * scale), Image.NEAREST)
    side = np.array([w * scale, h * scale] * 2, dtype=np.float64)
    if spec.kind == "segmentation":
        labels = pred[i].float().argmax(0).numpy()
        colours = np.array([(0, 0, 0), *PALETTE * (1 + len(spec.classes) // len(PALETTE))])
        paint = colours[labels].astype(np.uint8)
        mask = Image.fromarray(((labels > 0) * 110).astype(np.uint8)).resize(image.size)
        image.paste(Image.fromarray(paint).resize(image.size, Image.NEAREST), mask=mask)
        return image
    draw = ImageDraw.Draw(image)
    if spec.kind == "detection":
        probs = pred["logits"][i].float().softmax(-1)
        for j, (p, c) in enumerate(zip(*probs.max(-1), strict=True)):
            if int(c) >= len(spec.classes):
                continue
            colour = PALETTE[int(c) % len(PALETTE)]
            box = (pred["boxes"][i, j].numpy() * side).tolist()
            draw.rectangle(box, outline=colour, width=2)
            draw.text(
                (box[0] + 2, box[1] + 1), f"{spec.classes[int(c)]} {float(p):.2f}", fill=colour
            )
        return image
    for k, (x, y) in enumerate(pred[i].float().tolist()):
        cx, cy, r = x * side[0], y * side[1], 3
        colour = PALETTE[k % len(PALETTE)]
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        draw.text((cx + 4, cy - 4), spec.classes[k], fill=colour)
    return image
