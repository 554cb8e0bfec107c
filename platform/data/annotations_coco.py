"""COCO JSON (``images``, ``annotations``, ``categories``) -> per-video detection, segmentation
and keypoints values (the formats are in :mod:`veilfed.data.annotations`).

Each image is one frame of a video:

* the video: the image's ``"video"`` (a path, file name or stem, used as the output key as
  written); without it, a ``file_name`` like ``"clip.mp4/000123.jpg"`` or ``"x/clip/000123.jpg"``
  names video ``clip.mp4`` (``clip``) and frame index 123 (0-based: extract with ffmpeg's
  ``-start_number 0``);
* its time: ``"timestamp"`` in seconds from the start of the video file, else ``"frame_index"``
  (0-based), turned into ``frame_index / fps[video]``; without a known fps that is an error;
* ``width`` and ``height`` in pixels: boxes and points are divided by them, masks sized by them.

``fps`` and ``durations`` are mappings (or callables) looked up by the video as written, then its
file name, then its stem; a video absent from ``durations`` is not checked against its length.
Images of one video at the same time are one frame.

Which declared task gets what: boxes (``bbox``) go to the detection task, masks
(``segmentation``: polygons, uncompressed or compressed RLE) to the segmentation task, keypoints to
the keypoints task. Without ``task``, each kind present in the file goes to the one declared task of
that kind, and a kind with no declared task is skipped (COCO instance files carry boxes and masks on
every annotation); the file must fill at least one task. With ``task``, only that task is filled.
Detection and segmentation category names must be classes of the task. Crowd annotations
(``iscrowd`` = 1) are kept as masks with ``"crowd": true`` and are skipped for boxes and
keypoints. A keypoints task's classes are keypoint names, looked up in the category's
``"keypoints"`` list (in the task's order when the category names none); per image, the first
non-crowd annotation with a labelled point is the figure and the others are ignored. Every image
gives a frame (possibly empty) to the detection and segmentation tasks; keypoints frames exist only
for images with a figure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from veilfed.data.coco_shapes import box, is_number, points, rle
from veilfed.errors import UsageError
from veilfed.tasks import TaskSpec

Lookup = Mapping[str, float] | Callable[[str], float | None]
CONTENT = {"detection": "boxes", "segmentation": "masks", "keypoints": "keypoints"}


def read_json(path: Path, what: str) -> Any:
    """The parsed JSON at ``path``; unreadable or invalid -> one-line :class:`UsageError`."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UsageError(f"{path}: cannot read the {what} ({reason}); check the path") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}:{exc.lineno}: not JSON ({exc.msg}); fix the file") from None


@dataclass
class _Frame:
    t: float
    boxes: list[list[float]] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    masks: list[dict[str, Any]] = field(default_factory=list)
    points: list[list[float]] | None = None


@dataclass
class _Image:
    video: str
    width: int
    height: int
    frame: _Frame


@dataclass
class _Category:
    name: str
    keypoints: list[str] | None


def read_coco(
    path: str | Path,
    specs: Mapping[str, TaskSpec],
    durations: Lookup | None = None,
    fps: Lookup | None = None,
    task: str | None = None,
) -> dict[str, dict[str, Any]]:
    """COCO file -> ``{video: {task name: {"frames": [...]}}}`` (see the module docstring)."""
    path = Path(path)
    data = read_json(path, "COCO file")
    sections = [data.get(k) if isinstance(data, dict) else None for k in _SECTIONS]
    if not all(isinstance(s, list) for s in sections):
        raise UsageError(
            f'{path}: not a COCO file; it needs "images", "annotations" and "categories" lists'
        )
    raw_images, anns, cats = sections
    targets = _targets(path, specs, _present(anns), task)
    categories = _categories(path, cats)
    frames: dict[tuple[str, float], _Frame] = {}
    images: dict[Any, _Image] = {}
    for n, img in enumerate(raw_images, start=1):
        with _malformed(path, "image", n):
            iid, video, t, width, height = _image(path, n, img, durations, fps)
            frame = frames.setdefault((video, t), _Frame(t))
            images[iid] = _Image(video, width, height, frame)
    for n, ann in enumerate(anns, start=1):
        with _malformed(path, "annotation", n):
            _annotation(path, n, ann, images, categories, targets)
    out: dict[str, dict[str, Any]] = {}
    for (video, t), frame in sorted(frames.items()):
        _check_slots(path, video, t, frame, targets.get("detection"))
        tasks = out.setdefault(video, {s.name: {"frames": []} for s in targets.values()})
        for kind, spec in targets.items():
            value = _frame_value(kind, frame)
            if value is not None:
                tasks[spec.name]["frames"].append(value)
    return out


_SECTIONS = ("images", "annotations", "categories")


@contextmanager
def _malformed(path: Path, what: str, n: int) -> Iterator[None]:
    """A field of the wrong JSON type (a list as an id, text as a number) -> one line naming
    the entry, not a traceback."""
    try:
        yield
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise UsageError(
            f"{path}: {what} entry {n} has a field of the wrong type ({exc!r:.60}); "
            "fix it to the COCO format (docs/data.md)"
        ) from None


def _present(anns: list[Any]) -> list[str]:
    """The kinds whose content some annotation carries, in :data:`CONTENT` order."""
    has = {
        "detection": lambda a: "bbox" in a,
        "segmentation": lambda a: bool(a.get("segmentation")),
        "keypoints": lambda a: bool(a.get("keypoints")),
    }
    return [k for k, test in has.items() if any(isinstance(a, dict) and test(a) for a in anns)]


def _targets(
    path: Path, specs: Mapping[str, TaskSpec], present: list[str], task: str | None
) -> dict[str, TaskSpec]:
    if task is not None:
        spec = specs.get(task)
        if spec is None:
            raise UsageError(
                f"{path}: task {task!r} is not declared; declare it in "
                f"[model.tasks.{task}] or name one of: {', '.join(specs)}"
            )
        if spec.kind not in CONTENT:
            raise UsageError(
                f"{path}: task {task!r} is a {spec.kind} task; a COCO file fills a "
                "detection, segmentation or keypoints task"
            )
        return {spec.kind: spec}
    targets: dict[str, TaskSpec] = {}
    for kind in present:
        matching = [s.name for s in specs.values() if s.kind == kind]
        if len(matching) > 1:
            raise UsageError(
                f"{path}: tasks {', '.join(matching)} are all {kind} tasks; name "
                "the one this COCO file is for"
            )
        if matching:
            targets[kind] = specs[matching[0]]
    if not targets:
        if not present:
            raise UsageError(
                f"{path}: no annotation has a bbox, segmentation or keypoints; "
                "name the task to fill if every image is a negative"
            )
        kind = present[0]
        raise UsageError(
            f"{path}: the file has {CONTENT[kind]} but no {kind} task is declared; "
            f'declare one in [model.tasks.NAME] with kind = "{kind}" and its classes'
        )
    return targets


def _categories(path: Path, cats: list[Any]) -> dict[Any, _Category]:
    out: dict[Any, _Category] = {}
    for n, cat in enumerate(cats, start=1):
        name = cat.get("name") if isinstance(cat, dict) else None
        if not isinstance(name, str) or not name or "id" not in cat:
            raise UsageError(f"{path}: category entry {n} needs an id and a name; add them")
        kps = cat.get("keypoints")
        if kps is not None and not (isinstance(kps, list) and all(isinstance(k, str) for k in kps)):
            raise UsageError(f"{path}: category {name!r} keypoints must be a list of names")
        out[cat["id"]] = _Category(name, kps or None)
    return out


def _lookup(table: Lookup | None, video: str) -> float | None:
    if table is None:
        return None
    if callable(table):
        return table(video)
    p = PurePosixPath(video.replace("\\", "/"))
    return next((table[k] for k in (video, p.name, p.stem) if k in table), None)


def _from_file_name(name: Any) -> tuple[str | None, int | None]:
    """``"x/clip.mp4/000123.jpg"`` -> ``("clip.mp4", 123)``; otherwise ``(None, None)``."""
    if not isinstance(name, str):
        return None, None
    p = PurePosixPath(name.replace("\\", "/"))
    digits = re.search(r"(\d+)$", p.stem)
    if not p.parent.name or digits is None:
        return None, None
    return p.parent.name, int(digits.group(1))


def _image(
    path: Path, n: int, img: Any, durations: Lookup | None, fps: Lookup | None
) -> tuple[Any, str, float, int, int]:
    """(id, video, time in s, width, height) of images entry ``n``."""
    if not isinstance(img, dict) or "id" not in img:
        raise UsageError(f"{path}: image entry {n} has no id; add one")
    iid = img["id"]
    where = f"{path}: COCO image id {iid}"
    w, h = img.get("width"), img.get("height")
    if not (is_number(w) and is_number(h) and w >= 1 and h >= 1):
        raise UsageError(f"{where}: width and height must be pixel counts >= 1; add them")
    video, index = img.get("video"), img.get("frame_index")
    if video is None:
        video, from_name = _from_file_name(img.get("file_name"))
        index = from_name if index is None else index
    if not isinstance(video, str) or not video:
        raise UsageError(
            f'{where}: names no video; add "video" (its file name) or use a '
            'file_name like "clip.mp4/000123.jpg"'
        )
    if "timestamp" in img:
        t = img["timestamp"]
        if not is_number(t) or t < 0:
            raise UsageError(f"{where}: timestamp {t!r} must be seconds >= 0; fix it")
    elif index is not None:
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise UsageError(f"{where}: frame_index {index!r} must be a whole number >= 0")
        rate = _lookup(fps, video)
        if not rate or not rate > 0:
            raise UsageError(
                f"{where}: frame_index {index} needs the fps of {video}, which is "
                'unknown; give "timestamp" in seconds instead'
            )
        t = index / rate
    else:
        raise UsageError(f'{where}: has no time; add "timestamp" (seconds) or "frame_index"')
    d = _lookup(durations, video)
    if d is not None and t >= d:
        raise UsageError(
            f"{path}: COCO image id {iid} ({video} at {t:.2f} s) matches no frame: "
            f"the video is {d:.2f} s long; fix the image's time or video"
        )
    return iid, video, round(float(t), 6), int(round(w)), int(round(h))


def _annotation(
    path: Path,
    n: int,
    ann: Any,
    images: Mapping[Any, _Image],
    categories: Mapping[Any, _Category],
    targets: Mapping[str, TaskSpec],
) -> None:
    """Add annotations entry ``n`` to its image's frame, for each target task."""
    if not isinstance(ann, dict):
        raise UsageError(f"{path}: annotation entry {n} is not an object; fix or remove it")
    where = f"{path}: annotation id {ann['id']}" if "id" in ann else f"{path}: annotation entry {n}"
    image = images.get(ann.get("image_id"))
    if image is None:
        raise UsageError(
            f"{where}: image_id {ann.get('image_id')!r} is not in images; add the "
            "image or remove the annotation"
        )
    cat = categories.get(ann.get("category_id"))
    if cat is None:
        raise UsageError(
            f"{where}: category_id {ann.get('category_id')!r} is not in "
            "categories; add the category or fix the id"
        )
    crowd = bool(ann.get("iscrowd", 0))
    frame = image.frame
    if "detection" in targets and not crowd:
        spec = targets["detection"]
        frame.boxes.append(box(where, ann, image))
        frame.classes.append(spec.classes[spec.index(cat.name, where)])
    if "segmentation" in targets and ann.get("segmentation"):
        spec = targets["segmentation"]
        name = spec.classes[spec.index(cat.name, where)]
        frame.masks.append({"class": name, "rle": rle(where, ann, image), "crowd": crowd})
    if "keypoints" in targets and not crowd and frame.points is None and ann.get("keypoints"):
        frame.points = points(where, ann, cat, image, targets["keypoints"])


def _check_slots(path: Path, video: str, t: float, frame: _Frame, spec: TaskSpec | None) -> None:
    """A frame with more boxes than the detection head has slots would lose boxes silently."""
    if spec is not None and len(frame.boxes) > spec.options["slots"]:
        raise UsageError(
            f"{path}: {video} at {t:.2f} s has {len(frame.boxes)} boxes, task {spec.name!r} "
            f"keeps {spec.options['slots']}; raise [model.tasks.{spec.name}] slots"
        )


def _frame_value(kind: str, frame: _Frame) -> dict[str, Any] | None:
    if kind == "detection":
        return {"t": frame.t, "boxes": frame.boxes, "classes": frame.classes}
    if kind == "segmentation":
        return {"t": frame.t, "masks": frame.masks}
    return None if frame.points is None else {"t": frame.t, "points": frame.points}
