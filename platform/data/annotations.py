"""Annotation files in common formats -> per-video label values for declared tasks.

Every reader returns ``{video key: {task name: value}}``. The video key is the file as the
annotation names it (a path, file name or stem); the caller matches it to ingested files. Values are
plain JSON (stored encrypted with the clip), use class *names*, give times in seconds from the start
of the video file and coordinates as fractions of the image width/height, clipped to [0, 1]:

* detection: ``{"frames": [{"t": 1.25, "boxes": [[x0, y0, x1, y1], ...], "classes": ["car",
  ...]}, ...]}``, frames sorted by ``t``, one class per box; a frame without boxes is a negative.
* segmentation: ``{"frames": [{"t": 1.25, "masks": [{"class": "car", "rle": {"size": [h, w],
  "counts": "<COCO compressed RLE>"}, "crowd": false}, ...]}, ...]}``; decode a mask with
  ``pycocotools.mask.decode({"size": size, "counts": counts.encode()})``. ``crowd`` marks an
  ``iscrowd`` region (many objects, one mask).
* keypoints: ``{"frames": [{"t": 1.25, "points": [[x, y, v], ...]}, ...]}``: one figure per frame,
  points in the order of the task's ``classes`` (keypoint names), ``v`` 1 if labelled (COCO
  visibility > 0) else 0, with ``[0, 0, 0]`` for an unlabelled point.
* caption: ``[[start, end, "text"], ...]`` cues sorted by start.
* ``"transcript_cues"`` (not a task, a fixed key): ``[[start, end, "text"], ...]`` as caption.
* qa: ``[{"question": "...", "answer": "yes"}, ...]``, each answer one of the task's classes.
* frame_scores: ``[[t, score], ...]`` sorted by ``t``, score in [0, 1].

Readers: :func:`read_subtitles` / :func:`subtitles_dir` (WebVTT, SRT), :func:`read_coco` (COCO
JSON; frame times, task routing and crowd handling in :mod:`veilfed.data.annotations_coco`),
:func:`read_qa`, :func:`read_frame_scores`. Bad input raises a one-line :class:`UsageError` that
starts with the file (and ``:line``, ``entry N`` or ``annotation id N``) and says what to do.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from veilfed.data.annotations_coco import read_coco, read_json
from veilfed.data.coco_shapes import is_number
from veilfed.errors import UsageError
from veilfed.tasks import TaskSpec

__all__ = [
    "TRANSCRIPT",
    "read_coco",
    "read_frame_scores",
    "read_qa",
    "read_subtitles",
    "subtitles_dir",
]

TRANSCRIPT = "transcript_cues"
SUBTITLE_EXTENSIONS = (".vtt", ".srt")
Cue = tuple[float, float, str]

_VTT_TIME = r"(?:(\d{2,}):)?([0-5]\d):([0-5]\d)\.(\d{3})"
_SRT_TIME = r"(\d{1,}):([0-5]\d):([0-5]\d)[,.](\d{3})"
_TIMING = {
    ".vtt": re.compile(rf"^{_VTT_TIME}[ \t]+-->[ \t]+{_VTT_TIME}(?:[ \t]+.*)?$"),
    ".srt": re.compile(rf"^\s*{_SRT_TIME}[ \t]*-->[ \t]*{_SRT_TIME}(?:[ \t]+.*)?$"),
}
_FORM = {".vtt": "hh:mm:ss.ttt --> hh:mm:ss.ttt", ".srt": "hh:mm:ss,ttt --> hh:mm:ss,ttt"}
_SKIPPED_VTT_BLOCK = re.compile(r"(NOTE|STYLE|REGION)(?:[ \t]|$)")
_TAG = re.compile(r"<[^>]*>|\{\\[^}]*\}")  # <v Speaker>, <i>, <00:01.000>, SRT {\an8}


def read_subtitles(path: str | Path) -> list[Cue]:
    """A WebVTT (``.vtt``) or SubRip (``.srt``) file -> ``[(start, end, text)]`` sorted by start.

    WebVTT must start with ``WEBVTT``; NOTE/STYLE/REGION blocks are skipped; cue identifiers and
    cue settings are allowed; times are ``hh:mm:ss.ttt`` or ``mm:ss.ttt``. SRT times are
    ``hh:mm:ss,ttt``. A cue's lines are joined with spaces; markup tags are removed and entities
    unescaped. A bad timing, an end not after the start or a cue without text is an error.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUBTITLE_EXTENSIONS:
        raise UsageError(f"{path}: unknown subtitle format; use a .vtt (WebVTT) or .srt file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UsageError(f"{path}: cannot read subtitles ({reason}); save them as UTF-8") from None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks = _blocks(lines)
    if suffix == ".vtt":
        if not re.match(r"WEBVTT(?:[ \t]|$)", lines[0]):
            raise UsageError(f"{path}:1: a WebVTT file must start with a WEBVTT line; add it")
        header = next(blocks, [])
        arrow = next((n for n, line in header if "-->" in line), None)
        if arrow is not None:
            raise UsageError(
                f"{path}:{arrow}: add a blank line between the WEBVTT header and the first cue"
            )
        blocks = (b for b in blocks if not _SKIPPED_VTT_BLOCK.match(b[0][1]))
    cues = [_cue(path, block, suffix) for block in blocks]
    return sorted(cues, key=lambda c: (c[0], c[1]))


def _blocks(lines: list[str]) -> Iterator[list[tuple[int, str]]]:
    """Runs of non-blank lines as ``[(line number, line)]``."""
    block: list[tuple[int, str]] = []
    for n, line in enumerate(lines, start=1):
        if line.strip():
            block.append((n, line.rstrip()))
        elif block:
            yield block
            block = []
    if block:
        yield block


def _seconds(h: str | None, m: str, s: str, ms: str) -> float:
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def _cue(path: Path, block: list[tuple[int, str]], suffix: str) -> Cue:
    """One cue block: an optional identifier line, the timing line, then text lines."""
    at = 1 if "-->" not in block[0][1] and len(block) > 1 else 0
    line_no, timing = block[at]
    m = _TIMING[suffix].match(timing)
    if m is None:
        raise UsageError(
            f"{path}:{line_no}: {timing[:60]!r} is not a cue timing "
            f"({_FORM[suffix]}); fix or remove the cue"
        )
    start, end = _seconds(*m.groups()[:4]), _seconds(*m.groups()[4:])
    if end <= start:
        raise UsageError(
            f"{path}:{line_no}: the cue ends at {end:.3f} s, not after its start "
            f"{start:.3f} s; fix or remove the cue"
        )
    raw = " ".join(line for _, line in block[at + 1 :])
    text = " ".join(html.unescape(_TAG.sub("", raw)).split())
    if not text:
        raise UsageError(f"{path}:{line_no}: the cue has no text; fix or remove the cue")
    return start, end, text


def subtitles_dir(path: str | Path, task: str | TaskSpec) -> dict[str, dict[str, Any]]:
    """A directory of ``.vtt``/``.srt`` files named by video stem -> ``{stem: {task: cues}}``.

    ``task`` is a caption task (or its name) or :data:`TRANSCRIPT`; only the directory's own files
    are read, and two subtitle files of one stem are an error.
    """
    path = Path(path)
    if isinstance(task, TaskSpec):
        if task.kind != "caption":
            raise UsageError(
                f"{path}: task {task.name!r} is a {task.kind} task; subtitles fill a "
                f"caption task or {TRANSCRIPT}"
            )
        task = task.name
    if not path.is_dir():
        raise UsageError(f"{path}: not a directory; give the folder of .vtt/.srt files")
    out: dict[str, dict[str, Any]] = {}
    seen: dict[str, Path] = {}
    for file in sorted(path.iterdir()):
        if not file.is_file() or file.suffix.lower() not in SUBTITLE_EXTENSIONS:
            continue
        if file.stem in seen:
            raise UsageError(f"{file}: {seen[file.stem].name} has the same video stem; keep one")
        seen[file.stem] = file
        out[file.stem] = {task: [list(cue) for cue in read_subtitles(file)]}
    return out


def _check_kind(path: Path, spec: TaskSpec, kind: str) -> None:
    if spec.kind != kind:
        raise UsageError(
            f"{path}: task {spec.name!r} is a {spec.kind} task; these labels need a {kind} task"
        )


def _entries(path: Path, data: Any, what: str) -> Iterator[tuple[str, str, Any]]:
    """``{video: [items]}`` -> ``(video, where, item)`` for each item, ``where`` naming it."""
    if not isinstance(data, dict):
        raise UsageError(f'{path}: expected {{"video.mp4": {what}, ...}}; fix the file')
    for video, items in data.items():
        if not isinstance(items, list):
            raise UsageError(f"{path}: {video}: expected {what}; fix the entry")
        for n, item in enumerate(items, start=1):
            yield video, f"{path}: {video} entry {n}", item


def read_qa(path: str | Path, spec: TaskSpec) -> dict[str, dict[str, Any]]:
    """QA JSON -> ``{video: {task: [{"question", "answer"}]}}``, answers among the classes.

    Accepted: ``{"video.mp4": [{"question": .., "answer": ..}, ...]}`` or a list of
    ``{"file": .., "question": .., "answer": ..}``.
    """
    path = Path(path)
    _check_kind(path, spec, "qa")
    data = read_json(path, "QA file")
    if isinstance(data, list):
        rows = [
            (str(r.get("file", "")) if isinstance(r, dict) else "", f"{path}: entry {n}", r)
            for n, r in enumerate(data, start=1)
        ]
    else:
        rows = list(_entries(path, data, "[{question, answer}, ...]"))
    out: dict[str, dict[str, Any]] = {}
    for video, where, row in rows:
        if not video:
            raise UsageError(f'{where}: has no file; add "file" naming the video')
        question = row.get("question") if isinstance(row, dict) else None
        if not isinstance(question, str) or not question.strip():
            raise UsageError(f'{where}: needs a non-empty "question" and an "answer"; add them')
        if row.get("answer") is None:
            raise UsageError(f'{where}: has no "answer"; add one of the task\'s classes')
        answer = spec.classes[spec.index(row["answer"], where)]
        item = {"question": question.strip(), "answer": answer}
        out.setdefault(video, {spec.name: []})[spec.name].append(item)
    return out


def read_frame_scores(path: str | Path, spec: TaskSpec) -> dict[str, dict[str, Any]]:
    """Frame scores JSON -> ``{video: {task: [[t, score], ...]}}`` sorted by ``t``.

    Accepted per video: ``[[t, score], ...]`` with ``t`` in seconds, or ``{"fps": 8, "scores":
    [s0, s1, ...]}`` where score ``i`` is at ``i / fps`` s. Scores must lie in [0, 1].
    """
    path = Path(path)
    _check_kind(path, spec, "frame_scores")
    data = read_json(path, "frame scores file")
    if isinstance(data, dict):
        data = {v: _scores_list(path, v, s) for v, s in data.items()}
    out: dict[str, dict[str, Any]] = {}
    for video, where, pair in _entries(path, data, "[[t, score], ...]"):
        if not (isinstance(pair, list) and len(pair) == 2 and all(map(is_number, pair))):
            raise UsageError(f"{where}: expected [t, score] numbers, got {pair!r}; fix it")
        t, score = pair
        if t < 0:
            raise UsageError(f"{where}: time {t} s is negative; use seconds from the video start")
        if not 0.0 <= score <= 1.0:
            raise UsageError(f"{where}: score {score} is outside [0, 1]; rescale it")
        out.setdefault(video, {spec.name: []})[spec.name].append([float(t), float(score)])
    for tasks in out.values():
        tasks[spec.name].sort(key=lambda p: p[0])
    return out


def _scores_list(path: Path, video: str, value: Any) -> Any:
    """``{"fps": f, "scores": [...]}`` -> ``[[i / f, s], ...]``; a list passes through."""
    if not isinstance(value, dict):
        return value
    fps, scores = value.get("fps"), value.get("scores")
    if not (is_number(fps) and fps > 0 and isinstance(scores, list)):
        raise UsageError(f'{path}: {video}: expected {{"fps": > 0, "scores": [...]}}; fix it')
    return [[round(i / fps, 6), s] for i, s in enumerate(scores)]
