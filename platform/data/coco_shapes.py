"""Geometry of one COCO annotation, normalised for storage: a box, a mask as compressed RLE,
a figure's keypoints (the formats are in :mod:`veilfed.data.annotations`).

``image`` is anything with ``width`` and ``height`` in pixels, ``cat`` anything with ``name``
and ``keypoints`` (the category's keypoint names, or None); ``where`` starts every one-line
:class:`UsageError` (the file and annotation id). Coordinates are divided by the image size,
clipped to [0, 1] and rounded to 6 decimals.
"""

from __future__ import annotations

import math
from typing import Any

from pycocotools import mask as mask_utils

from veilfed.errors import UsageError
from veilfed.tasks import TaskSpec


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _clip(v: float) -> float:
    return round(min(max(float(v), 0.0), 1.0), 6)


def box(where: str, ann: dict[str, Any], image: Any) -> list[float]:
    bbox = ann.get("bbox")
    if bbox is None and ann.get("segmentation"):
        bbox = [float(v) for v in mask_utils.toBbox(rle_bytes(where, ann, image))]
    if bbox is None:
        raise UsageError(f"{where}: has no bbox; add [x, y, width, height] in pixels")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(is_number, bbox))):
        raise UsageError(f"{where}: bbox {bbox!r} must be [x, y, width, height] in pixels")
    x, y, bw, bh = bbox
    if bw <= 0 or bh <= 0:
        raise UsageError(f"{where}: bbox {bbox!r} needs width and height > 0; fix or remove it")
    w, h = image.width, image.height
    return [_clip(x / w), _clip(y / h), _clip((x + bw) / w), _clip((y + bh) / h)]


def rle_bytes(where: str, ann: dict[str, Any], image: Any) -> dict[str, Any]:
    """The annotation's mask as one pycocotools RLE (``counts`` bytes)."""
    seg, h, w = ann["segmentation"], image.height, image.width
    if isinstance(seg, list):
        for i, poly in enumerate(seg):
            if not (
                isinstance(poly, list)
                and len(poly) >= 6
                and len(poly) % 2 == 0
                and all(map(is_number, poly))
            ):
                raise UsageError(
                    f"{where}: polygon {i} must list 3 or more x, y pixel pairs; fix or remove it"
                )
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    if not (isinstance(seg, dict) and "counts" in seg and "size" in seg):
        raise UsageError(f"{where}: segmentation must be polygons or an RLE with size and counts")
    if list(seg["size"]) != [h, w]:
        raise UsageError(
            f"{where}: RLE size {seg['size']!r} is not the image's [height, width] "
            f"{[h, w]}; fix one of them"
        )
    counts = seg["counts"]
    if isinstance(counts, str):
        runs = string_counts(counts)
    elif isinstance(counts, list) and all(is_number(c) and c == int(c) for c in counts):
        runs = [int(c) for c in counts]
    else:
        runs = None
    if runs is None or any(c < 0 for c in runs) or sum(runs) != h * w:
        # pycocotools' decoder writes past its buffer on runs that overfill the image
        raise UsageError(
            f"{where}: RLE counts must be run lengths (a list or a compressed string) that "
            f"cover the {h}x{w} image exactly; fix or remove the mask"
        )
    if isinstance(counts, str):
        return {"size": [h, w], "counts": counts.encode("ascii")}
    return mask_utils.frPyObjects({"size": [h, w], "counts": runs}, h, w)


def string_counts(text: str) -> list[int] | None:
    """The run lengths of a COCO compressed RLE string (pycocotools' ``rleFrString``: 5 bits a
    character from ``'0'``, bit 6 continues, sign-extended, runs after the second delta-coded),
    or None when the string is not one."""
    runs: list[int] = []
    x = k = 0
    more = False
    for ch in text:
        c = ord(ch) - 48
        if not 0 <= c < 64:
            return None
        x |= (c & 0x1F) << (5 * k)
        more = bool(c & 0x20)
        k += 1
        if more:
            continue
        if c & 0x10:
            x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
        x = k = 0
    return None if more else runs


def rle(where: str, ann: dict[str, Any], image: Any) -> dict[str, Any]:
    rle = rle_bytes(where, ann, image)
    return {"size": [image.height, image.width], "counts": rle["counts"].decode("ascii")}


def points(
    where: str, ann: dict[str, Any], cat: Any, image: Any, spec: TaskSpec
) -> list[list[float]] | None:
    """The figure's points in the task's keypoint order, or None when no point is labelled."""
    kps = ann["keypoints"]
    if not (isinstance(kps, list) and len(kps) % 3 == 0 and all(map(is_number, kps))):
        raise UsageError(f"{where}: keypoints must be a flat list of x, y, v triples; fix it")
    triples = [kps[i : i + 3] for i in range(0, len(kps), 3)]
    names = cat.keypoints
    if names is None:
        if len(triples) != len(spec.classes):
            raise UsageError(
                f"{where}: {len(triples)} keypoints but task {spec.name!r} declares "
                f"{len(spec.classes)}; list their names in category {cat.name!r}'s "
                '"keypoints"'
            )
        order = list(range(len(triples)))
    else:
        if len(names) != len(triples):
            raise UsageError(
                f"{where}: {len(triples)} keypoints but category {cat.name!r} names "
                f"{len(names)}; fix one of them"
            )
        missing = [c for c in spec.classes if c not in names]
        if missing:
            raise UsageError(
                f"{where}: category {cat.name!r} has no keypoint {missing[0]!r}; "
                f"use names from {', '.join(names)} in "
                f"[model.tasks.{spec.name}] classes"
            )
        order = [names.index(c) for c in spec.classes]
    if not any(triples[i][2] > 0 for i in order):
        return None
    w, h = image.width, image.height
    return [
        [_clip(x / w), _clip(y / h), 1] if v > 0 else [0.0, 0.0, 0]
        for x, y, v in (triples[i] for i in order)
    ]
