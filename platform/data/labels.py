"""Labels for ingest: every ``--labels [TASK=]FILE`` read, checked against the declared tasks and
matched to the videos being ingested, before anything is written.

A source is one file or directory; what it holds is told by its form and, where that is not
enough, by ``TASK=`` (a declared task's name):

=============================== ===========================================================
source                          read as
=============================== ===========================================================
``.csv`` / ``.json`` table      per-file labels (:func:`load_labels`): a column (field) per
                                clip-level task, class names as text, numbers for regressions,
                                ``transcript`` text, ``caption`` text for a caption task
COCO ``.json`` (``images``,     boxes, masks and keypoints (:func:`veilfed.data.annotations.
``annotations``)                read_coco`), to the declared detection / segmentation /
                                keypoints task, or to ``TASK``
``.vtt`` / ``.srt`` or a folder the transcript (text modality), or with ``TASK=`` a caption task's
of them                         cues; a file's or its folder entry's stem names the video
``TASK=qa.json``                question/answer pairs of a qa task
``TASK=scores.json``            per-frame scores of a frame_scores task
=============================== ===========================================================

Every value is stored in the form :mod:`veilfed.data.targets` reads (class names, not indices).
A labels entry naming no video among the inputs, a class the task does not declare, a field that
is no declared task and two sources labelling the same video's task are one-line
:class:`UsageError`s naming the file (and entry), raised before the store is touched.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veilfed.data import annotations
from veilfed.data.targets import canonical
from veilfed.errors import UsageError
from veilfed.tasks import TaskSpec

_KEY_COLUMNS = ("file", "path", "clip_id")
TEXT_FIELDS = ("transcript",)  # per-file fields that are no task: the text modality
CLIP_KINDS = ("classification", "binary", "multilabel", "regression", "caption")
Table = dict[str, dict[str, Any]]  # video key (path, name or stem) -> {task or field: value}


@dataclass(frozen=True)
class LabelSource:
    """One ``--labels`` argument: ``FILE`` or ``TASK=FILE``."""

    path: Path
    task: str | None = None

    @classmethod
    def parse(cls, text: str) -> LabelSource:
        task, sep, path = text.partition("=")
        if sep and task and "/" not in task and not Path(text).exists():
            return cls(Path(path), task)
        return cls(Path(text))


def _rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read labels file ({exc}); check --labels") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(data, dict):
            return [(str(k), v) for k, v in data.items()]
        if isinstance(data, list):
            return [
                (str(next((r[c] for c in _KEY_COLUMNS if c in r), "")), r)
                for r in data
                if isinstance(r, dict)
            ]
        raise UsageError(f"{path}: expected an object or a list of objects with 'file'")
    reader = csv.DictReader(text.splitlines())
    key = next((c for c in _KEY_COLUMNS if c in (reader.fieldnames or [])), None)
    if key is None:
        raise UsageError(f"{path}: labels CSV needs a 'file' column naming each video")
    return [(row[key], row) for row in reader]


def load_labels(path: str | Path, specs: Mapping[str, TaskSpec]) -> Table:
    """A per-file labels table (CSV with a ``file`` column, or JSON ``{"name.mp4": {...}}`` or a
    list of objects with ``file``) -> ``{key: {task: stored value}}``; see the module docstring."""
    path = Path(path)
    out: Table = {}
    for n, (name, row) in enumerate(_rows(path), start=2 if path.suffix != ".json" else 1):
        entry = f"line {n}" if path.suffix.lower() == ".csv" else f"entry {n}"
        if not name or not isinstance(row, dict):
            raise UsageError(f"{path}: {entry} has no file name; add a 'file' field")
        where = f"{path}: {entry} ({name})"
        labels: dict[str, Any] = {}
        for field, value in row.items():
            if field in _KEY_COLUMNS or value in ("", None):
                continue
            labels[field] = _value(field, value, specs, where)
        if name in out:
            raise UsageError(f"{where}: the file is listed twice; keep one row per video")
        out[name] = labels
    return out


def _value(field: str, value: Any, specs: Mapping[str, TaskSpec], where: str) -> Any:
    if field in TEXT_FIELDS:
        return str(value)
    spec = specs.get(field)
    if spec is None:
        declared = ", ".join(specs) or "none"
        raise UsageError(
            f"{where}: field {field!r} is not a declared task (declared: {declared}); declare "
            f"[model.tasks.{field}] in --config or remove the column"
        )
    if spec.kind not in CLIP_KINDS:
        raise UsageError(
            f"{where}: task {field!r} is a {spec.kind} task; give its annotations as "
            f"--labels {field}=FILE (docs/data.md), not as a column"
        )
    return canonical(spec, value, f"{where}: field {field!r}")


def read_source(
    source: LabelSource,
    specs: Mapping[str, TaskSpec],
    fps: Mapping[str, float],
    durations: Mapping[str, float],
) -> Table:
    """One source's table (module docstring); ``fps`` and ``durations`` by video key place COCO
    frames in time and refuse frames past a video's end."""
    path, task = source.path, source.task
    spec = None
    if task is not None:
        spec = specs.get(task)
        if spec is None:
            raise UsageError(
                f"--labels {task}={path}: {task!r} is not a declared task "
                f"(declared: {', '.join(specs) or 'none'}); declare it in --config"
            )
    if not path.exists():
        raise UsageError(f"{path}: no such labels file or folder; check --labels")
    if path.is_dir() or path.suffix.lower() in annotations.SUBTITLE_EXTENSIONS:
        if spec is not None and spec.kind != "caption":
            raise UsageError(
                f"--labels {task}={path}: subtitles feed a caption task, not a {spec.kind} task"
            )
        field = task or annotations.TRANSCRIPT
        if path.is_dir():
            return annotations.subtitles_dir(path, field)
        return {path.stem: {field: [list(c) for c in annotations.read_subtitles(path)]}}
    kind = spec.kind if spec is not None else None
    if kind in ("detection", "segmentation", "keypoints") or (kind is None and _is_coco(path)):
        return annotations.read_coco(path, specs, durations=durations, fps=fps, task=task)
    if kind == "qa":
        return annotations.read_qa(path, spec)
    if kind == "frame_scores":
        return annotations.read_frame_scores(path, spec)
    if spec is not None:
        raise UsageError(
            f"--labels {task}={path}: a {spec.kind} task's labels go in a per-file table; "
            "give the file without TASK= (a column per task)"
        )
    return load_labels(path, specs)


def _is_coco(path: Path) -> bool:
    if path.suffix.lower() != ".json":
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and "images" in data and "annotations" in data


def read_sources(
    sources: Iterable[LabelSource],
    specs: Mapping[str, TaskSpec],
    fps: Mapping[str, float],
    durations: Mapping[str, float],
) -> tuple[Table, dict[str, str]]:
    """Every source's table merged, and the source each video key came from (for errors)."""
    merged: Table = {}
    origin: dict[str, str] = {}
    for source in sources:
        for key, labels in read_source(source, specs, fps, durations).items():
            mine = merged.setdefault(key, {})
            clash = sorted(set(mine) & set(labels))
            if clash:
                raise UsageError(
                    f"{source.path}: {key!r} task {clash[0]!r} is already labelled by "
                    f"{origin[key]}; give each video's task one source"
                )
            mine.update(labels)
            origin.setdefault(key, str(source.path))
    return merged, origin


def keys_of(path: Path) -> tuple[str, ...]:
    """The keys a labels entry may name a video by: its path as given, file name, stem."""
    return (str(path), path.name, path.stem)


def video_keys(paths: Iterable[Path]) -> dict[str, list[Path]]:
    """Each key of :func:`keys_of` -> the distinct videos it names (more than one: ambiguous)."""
    out: dict[str, list[Path]] = {}
    for p in paths:
        for k in dict.fromkeys(keys_of(p)):
            if p not in out.setdefault(k, []):
                out[k].append(p)
    return out


def match(table: Table, origin: Mapping[str, str], paths: Iterable[Path]) -> dict[Path, dict]:
    """``{video path: labels}``; an entry that names none of ``paths``, or several (two inputs
    ``a/clip.mp4`` and ``b/clip.mp4`` named ``clip``), is an error, so a typo or a shared name
    cannot silently label the wrong video or leave one unlabelled."""
    by_key = video_keys(paths)
    out: dict[Path, dict[str, Any]] = {}
    for key, labels in table.items():
        found = by_key.get(key, [])
        where = origin.get(key, "labels")
        if not found:
            raise UsageError(
                f"{where}: entry {key!r} names no video among the inputs; "
                "check the file name or remove the entry"
            )
        if len(found) > 1:
            shown = ", ".join(str(p) for p in found[:3])
            raise UsageError(
                f"{where}: entry {key!r} names {len(found)} videos ({shown}); "
                "name each by its path as given to ingest"
            )
        path = found[0]
        mine = out.setdefault(path, {})
        clash = sorted(set(mine) & set(labels))
        if clash:
            raise UsageError(
                f"{where}: {path} task {clash[0]!r} is labelled twice (as {key!r} and by another "
                "name); give each video's task one entry"
            )
        mine.update(labels)
    return out
