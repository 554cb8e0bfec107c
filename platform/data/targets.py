"""A real clip's training targets for each declared task, from its stored labels or itself.

The dataset calls :func:`real_targets` once per sample with the frames it decoded and their times
in the source file. Each kind reads the label value that :mod:`veilfed.data.annotations` and
:mod:`veilfed.data.ingest` store under the task's name (docs/data.md has every format):

============== ==============================================================================
kind           label value -> target
============== ==============================================================================
classification a class name (or index) -> its index
binary         0/1/true/false -> 0.0/1.0
multilabel     a list of class names (or one ``;``-separated string) -> multi-hot [C]
regression     a number inside the task's ``range`` -> float
detection      ``{"frames": [{"t", "boxes", "classes"}]}`` -> boxes [T, N, 4], classes [T, N]
segmentation   ``{"frames": [{"t", "masks": [{"class", "rle"}]}]}`` -> labels [T, H, W]
keypoints      ``{"frames": [{"t", "points": [[x, y, v]]}]}`` -> points [T, P, 2], visible
caption        text, or cues ``[[start, end, text]]`` (the cues inside the clip's span)
qa             ``[{"question", "answer"}]`` -> question tokens [Q, Lq], answer indices [Q]
frame_scores   ``[[t, score]]`` -> scores [T]
restoration    none: the decoded clip is the target, a degraded copy the input (see below)
next_frame     none: the frames after the clip's last frame are the target
============== ==============================================================================

A frame-level annotation belongs to the decoded frame whose time is within half a source frame
of it; decoded frames with no annotation are *unknown*, not empty: detection classes
:data:`UNKNOWN_BOX` (no loss, not scored), segmentation pixels -1, keypoints invisible, frame
scores -1. So a clip annotated on every 10th frame trains on exactly those frames.

Restoration on real clips is self-supervised: with probability ``p_degraded`` a clip's input is
a degraded copy of itself (blur, noise, JPEG-like compression, or x2 super-resolution: the frames
downscaled by 2 and upscaled back), chosen by a generator seeded from the clip id, so the same
clip is degraded the same way in every epoch and on every evaluation.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils

from veilfed.data import schema
from veilfed.data.text import Tokenizer
from veilfed.errors import UsageError
from veilfed.tasks import UNKNOWN_BOX, TaskSpec


def placeholder(spec: TaskSpec, frames: int, height: int, width: int) -> dict[str, torch.Tensor]:
    """Targets of an unlabelled clip (masked out by ``target_mask``), in the kind's shapes."""
    k, n, o = spec.kind, len(spec.classes), spec.options
    zeros: dict[str, torch.Tensor]
    if k == "classification":
        zeros = {"target": torch.tensor(0)}
    elif k == "binary":
        zeros = {"target": torch.tensor(0.0)}
    elif k == "regression":
        zeros = {"target": torch.tensor(float(o["range"][0]))}
    elif k == "multilabel":
        zeros = {"target": torch.zeros(n)}
    elif k == "detection":
        zeros = {
            "boxes": torch.zeros(frames, o["slots"], 4),
            "classes": torch.full((frames, o["slots"]), UNKNOWN_BOX, dtype=torch.long),
        }
    elif k == "segmentation":
        zeros = {"target": torch.full((frames, height, width), -1, dtype=torch.long)}
    elif k == "keypoints":
        zeros = {"points": torch.zeros(frames, n, 2), "visible": torch.zeros(frames, n).bool()}
    elif k == "caption":
        zeros = {"target": torch.zeros(o["max_len"], dtype=torch.long)}
    elif k == "qa":
        q = o["questions"]
        zeros = {
            "questions": torch.zeros(q, schema.MAX_QUESTION_TOKENS, dtype=torch.long),
            "answers": torch.full((q,), -1, dtype=torch.long),
        }
    elif k == "frame_scores":
        zeros = {"target": torch.full((frames,), -1.0)}
    elif k == "restoration":
        zeros = {"target": torch.zeros(frames, 3, height, width)}
    else:  # next_frame
        zeros = {"target": torch.zeros(o["frames"], 3, height, width)}
    return {spec.key(f): v for f, v in zeros.items()}


def _nearest(times: np.ndarray, t: float, tolerance: float) -> int | None:
    i = int(np.abs(times - t).argmin())
    return i if abs(times[i] - t) <= tolerance else None


def _frame_entries(value: Any, times: np.ndarray, tolerance: float, where: str):
    """(decoded frame index, entry) of each annotated frame that matches a decoded frame."""
    frames = value.get("frames") if isinstance(value, Mapping) else None
    if not isinstance(frames, list):
        raise UsageError(f"{where}: expected {{'frames': [...]}}; re-ingest with --labels")
    for entry in frames:
        i = _nearest(times, float(entry["t"]), tolerance)
        if i is not None:
            yield i, entry


def _detection(spec, value, times, tol, where):
    slots = spec.options["slots"]
    boxes = torch.zeros(len(times), slots, 4)
    classes = torch.full((len(times), slots), UNKNOWN_BOX, dtype=torch.long)
    for i, entry in _frame_entries(value, times, tol, where):
        classes[i] = -1
        for j, (box, name) in enumerate(
            zip(entry["boxes"][:slots], entry["classes"], strict=False)
        ):
            boxes[i, j] = torch.tensor([float(v) for v in box])
            classes[i, j] = spec.index(name, where)
    return {"boxes": boxes, "classes": classes}


def _segmentation(spec, value, times, tol, where, height, width):
    labels = torch.full((len(times), height, width), -1, dtype=torch.long)
    for i, entry in _frame_entries(value, times, tol, where):
        frame = torch.zeros(height, width, dtype=torch.long)
        for m in entry["masks"]:  # a crowd region (many objects, one mask) is left unscored
            rle = dict(m["rle"])
            if isinstance(rle.get("counts"), str):
                rle["counts"] = rle["counts"].encode()
            with warnings.catch_warnings():  # pycocotools' decode predates numpy 2's copy= API
                warnings.simplefilter("ignore", DeprecationWarning)
                pixels = torch.from_numpy(mask_utils.decode(rle).astype(np.float32))
            pixels = F.interpolate(pixels[None, None], size=(height, width), mode="nearest")[0, 0]
            label = -1 if m.get("crowd") else spec.index(m["class"], where) + 1
            frame[pixels > 0.5] = label
        labels[i] = frame
    return {"target": labels}


def _keypoints(spec, value, times, tol, where):
    n = len(spec.classes)
    points, visible = torch.zeros(len(times), n, 2), torch.zeros(len(times), n).bool()
    for i, entry in _frame_entries(value, times, tol, where):
        pts = entry["points"]
        if len(pts) != n:
            raise UsageError(f"{where}: a frame has {len(pts)} keypoints, the task has {n}")
        for j, (x, y, v) in enumerate(pts):
            points[i, j] = torch.tensor([float(x), float(y)])
            visible[i, j] = bool(v)
    return {"points": points, "visible": visible}


def cue_text(value: Any, span: tuple[float, float] | None) -> str:
    """Text of a caption/transcript value: plain text, or the cues overlapping ``span``."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        return ""
    cues = [c for c in value if span is None or (c[0] < span[1] and c[1] > span[0])]
    return " ".join(str(c[2]) for c in cues)


def _qa(spec, value, tokenizer, where):
    q = spec.options["questions"]
    questions = torch.zeros(q, schema.MAX_QUESTION_TOKENS, dtype=torch.long)
    answers = torch.full((q,), -1, dtype=torch.long)
    for j, pair in enumerate(value[:q]):
        enc = tokenizer.encode(pair["question"], schema.MAX_QUESTION_TOKENS)
        questions[j] = torch.tensor(enc)
        answers[j] = spec.index(pair["answer"], where)
    return {"questions": questions, "answers": answers}


def _frame_scores(value, times, tol):
    scores = torch.full((len(times),), -1.0)
    for t, score in value:
        i = _nearest(times, float(t), tol)
        if i is not None:
            scores[i] = float(score)
    return {"target": scores}


def _scalar(spec: TaskSpec, value: Any, where: str) -> torch.Tensor:
    if spec.kind == "classification":
        return torch.tensor(spec.index(value, where))
    if spec.kind == "binary":
        text = str(value).strip().lower()
        flags = {"1": 1.0, "0": 0.0, "true": 1.0, "false": 0.0, "1.0": 1.0, "0.0": 0.0}
        if text not in flags:
            raise UsageError(f"{where}: {text[:40]!r} is not a flag; use 0/1/true/false")
        return torch.tensor(flags[text])
    if spec.kind == "multilabel":
        if not isinstance(value, str | list | tuple):
            raise UsageError(f"{where}: expected class names as a list or 'a;b', got {value!r}")
        names = value.split(";") if isinstance(value, str) else list(value)
        hot = torch.zeros(len(spec.classes))
        for name in (str(n).strip() for n in names):
            if name:
                hot[spec.index(name, where)] = 1.0
        return hot
    lo, hi = spec.options["range"]
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not lo <= number <= hi:
        raise UsageError(f"{where}: {str(value)[:40]!r} is not a number in [{lo:g}, {hi:g}]")
    return torch.tensor(number)


def canonical(spec: TaskSpec, value: Any, where: str) -> Any:
    """The stored form of a per-file label of a clip-level task (a class name, a 0.0/1.0 flag,
    a list of class names, a number), or the caption text; a one-line :class:`UsageError` for a
    value the task cannot take. Ingest stores labels in this form, so a class list reordered
    later still reads them right."""
    if spec.kind == "classification":
        return spec.classes[spec.index(value, where)]
    if spec.kind == "multilabel":
        hot = _scalar(spec, value, where)
        return [c for c, on in zip(spec.classes, hot.tolist(), strict=True) if on]
    if spec.kind in ("binary", "regression"):
        return float(_scalar(spec, value, where))
    return str(value)


def real_targets(
    specs: Mapping[str, TaskSpec],
    labels: Mapping[str, Any],
    times: Sequence[float],
    source_fps: float,
    height: int,
    width: int,
    tokenizer: Tokenizer,
    span: tuple[float, float] | None = None,
    where: str = "",
) -> tuple[dict[str, torch.Tensor], dict[str, bool]]:
    """(targets, labelled) of a real clip for every declared task except the self-supervised
    kinds (the dataset makes those from the frames): placeholders where the clip has no label."""
    times_arr = np.asarray(times, dtype=np.float64)
    tol = 0.5 / source_fps if source_fps > 0 else 1e-3
    targets: dict[str, torch.Tensor] = {}
    labelled: dict[str, bool] = {}
    for name, spec in specs.items():
        targets |= placeholder(spec, len(times_arr), height, width)
        value = labels.get(name)
        labelled[name] = False
        if value is None or spec.kind in ("restoration", "next_frame"):
            continue
        at = f"{where}: task {name!r}"
        if spec.kind == "caption" and not cue_text(value, span).strip():
            continue
        try:
            made = _made(spec, value, times_arr, tol, at, (height, width), tokenizer, span)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise UsageError(
                f"{at}: the stored label is not in the {spec.kind} format ({exc!r:.60}); "
                "re-ingest the clip with --labels"
            ) from None
        targets |= {spec.key(f): v for f, v in made.items()}
        labelled[name] = True
    return targets, labelled


def _rng(clip_id: str, salt: str) -> np.random.Generator:
    seed = int.from_bytes(hashlib.sha256(f"{salt}\0{clip_id}".encode()).digest()[:8], "big")
    return np.random.default_rng(seed)


def degrade(video: torch.Tensor, kind: str, rng: np.random.Generator) -> torch.Tensor:
    """``video`` [T, 3, H, W] in [0, 1] degraded by ``kind`` (see the module docstring)."""
    t, c, h, w = video.shape
    if kind == "blur":
        k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
        x = video.reshape(t * c, 1, h, w)
        x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5))
        x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1))
        return x.reshape(t, c, h, w)
    if kind == "noise":
        noise = torch.from_numpy(rng.normal(0.0, 0.06, size=video.shape).astype(np.float32))
        return (video + noise).clamp(0.0, 1.0)
    if kind == "sr2":
        small = F.interpolate(video, scale_factor=0.5, mode="area")
        return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
    return _compress(video)


def _compress(video: torch.Tensor) -> torch.Tensor:
    """Each frame through a low-quality JPEG (PIL), the artefacts of a heavily compressed file."""
    out = []
    for frame in (video.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=12)
        decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        out.append(torch.from_numpy(decoded.copy()))
    return torch.stack(out).permute(0, 3, 1, 2).float() / 255.0


def restoration_pair(
    spec: TaskSpec, clip_id: str, video: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) for a restoration task on a real clip: the target is the clip itself; the
    input a degraded copy with probability ``p_degraded`` (the same for a clip every time)."""
    rng = _rng(clip_id, f"restoration:{spec.name}")
    if rng.random() >= spec.options["p_degraded"]:
        return video, video
    kind = spec.options["degradations"][int(rng.integers(len(spec.options["degradations"])))]
    return degrade(video, kind, rng), video


def _made(spec, value, times, tol, where, size, tokenizer, span) -> dict[str, torch.Tensor]:
    """``{field: tensor}`` of one stored label of a non-self-supervised task."""
    if spec.kind in ("classification", "binary", "multilabel", "regression"):
        return {"target": _scalar(spec, value, where)}
    if spec.kind == "detection":
        return _detection(spec, value, times, tol, where)
    if spec.kind == "segmentation":
        return _segmentation(spec, value, times, tol, where, *size)
    if spec.kind == "keypoints":
        return _keypoints(spec, value, times, tol, where)
    if spec.kind == "caption":
        text = cue_text(value, span)
        return {"target": torch.tensor(tokenizer.encode(text, spec.options["max_len"], True))}
    if spec.kind == "qa":
        return _qa(spec, value, tokenizer, where)
    return _frame_scores(value, times, tol)
