"""Real videos (MP4/MOV/MKV/WebM, any size, rate, with or without audio) into an encrypted store.

The store keeps each file's *original bytes*, not a normalised re-encode: nothing is lost to a
second lossy encode, the training resolution/frame count stays a config choice made at read time
(``ClipDataset`` decodes to the world geometry), and labels that refer to the original timeline stay
valid. Each file is probed and fully decoded once at ingest so unreadable or truncated files are
skipped with a reason instead of failing a training run later. The plaintext file is only read,
never copied; what is written is Fernet tokens. A file already in the store, from this or any
earlier ingest, is skipped with a reason: one person's video stored twice would count twice towards
their privacy loss. Duplicates are matched on the file's sha256 and on ``content_sha256``, a digest
of the decoded frames and audio (:func:`veilfed.data.video.content_digest`), so a re-mux that
keeps the decoded samples or appended bytes are duplicates too; a lossy re-encode, crop or trim is
not detected. A clip's id is its file stem, or the first free ``stem-<digest>`` variant
(:func:`free_id`): ingest never replaces a stored clip. The whole ingest holds the store's writer
lock.

Labels (``--labels [TASK=]FILE``, :mod:`veilfed.data.labels`) are read, checked against the
declared tasks (``[model.tasks]`` of ``--config``; the synthetic preset's when none is given)
and matched to the input videos *before* anything is written, as are the windows of long files
(:class:`WindowPlan`): a bad label or window is one line and the store stays as it was. A video's
labels and windows are encrypted with it in its labels record.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veilfed.crypto.keys import FernetKey
from veilfed.data import schema, video
from veilfed.data.labels import LabelSource, match, read_sources, video_keys
from veilfed.data.store import EncryptedStore
from veilfed.data.windows import Window, plan_windows, scene_windows
from veilfed.tasks import TaskSpec, task_specs

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm"})


@dataclass
class IngestSummary:
    store: str
    ingested: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    already_stored: int = 0  # skipped files whose content an earlier ingest stored

    def to_json(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "ingested": len(self.ingested),
            "skipped": len(self.skipped),
            "already_in_store": self.already_stored,
            "clips": self.ingested,
            "skipped_files": self.skipped,
        }


def iter_sources(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files given explicitly (any extension), plus video files found under given directories."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS
            )
        else:
            yield p


@dataclass(frozen=True)
class _Candidate:
    path: Path
    data: bytes
    digest: str  # sha256 of the file's bytes
    content: str  # sha256 of its decoded frames and audio (video.content_digest)
    info: dict[str, Any]


def _candidates(paths: Iterable[Path], summary: IngestSummary) -> Iterator[_Candidate]:
    """Readable, decodable videos among ``paths``; the rest go to ``summary.skipped``."""
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            summary.skipped.append({"file": str(path), "reason": exc.strerror or str(exc)})
            continue
        try:
            info = video.probe(data, name=str(path))
            info["frames"], content = video.content_digest(data, name=str(path))
        except video.VideoError as exc:
            reason = str(exc).removeprefix(f"{path}: ")
            summary.skipped.append({"file": str(path), "reason": reason})
            continue
        yield _Candidate(path, data, hashlib.sha256(data).hexdigest(), content, info)


def free_id(store: EncryptedStore, stem: str, digest: str) -> str:
    """The first id not yet in ``store``: the stem, then ``stem-<digest[:8]>``, longer digest
    prefixes, then the full digest with a counter. A file named after another file's id only moves
    that later file on to the next free id; no stored clip is ever replaced. ``#`` becomes ``_``:
    ``<id>#<k>`` names window k of a clip (:mod:`veilfed.data.windowed`)."""
    stem = stem.replace("#", "_")
    tried = [stem, *(f"{stem}-{digest[:n]}" for n in (8, 16, 64))]
    counted = (f"{stem}-{digest}-{i}" for i in itertools.count(2))
    return next(cid for cid in itertools.chain(tried, counted) if cid not in store)


def _add(
    store: EncryptedStore,
    candidates: Iterable[_Candidate],
    plan: Prepared,
    summary: IngestSummary,
) -> None:
    """Encrypt each candidate into ``store`` (inside its batch, so under its writer lock).

    A file already in the store, from this or any earlier ingest, is skipped: a person's video
    stored twice would count twice towards their privacy loss. "Already in" means the same file
    bytes (``sha256``) or the same decoded frames and audio (``content_sha256``), so a re-mux or
    appended bytes are caught; a re-encode, crop or trim changes the decoded content and is not.
    """
    stored = store.content_hashes()
    known = {d: f"clip {cid!r} already in the store" for d, cid in stored.items()}
    for c in candidates:
        same = next((d for d in (c.digest, c.content) if d in known), None)
        if same is not None:
            summary.already_stored += same in stored
            what = "same file as" if same == c.digest else "same decoded video and audio as"
            summary.skipped.append({"file": str(c.path), "reason": f"{what} {known[same]}"})
            continue
        clip_id = free_id(store, c.path.stem, c.digest)
        matched = plan.labels.get(c.path, {})
        source = {"name": c.path.name, "sha256": c.digest, "content_sha256": c.content, **c.info}
        record = {"synthetic": False, "source": source, **matched}
        if c.path in plan.windows:
            record["windows"] = [[w.start, w.end] for w in plan.windows[c.path]]
        store.put(clip_id, c.data, record)  # never replaces: free_id picked an unused id
        known[c.digest] = known[c.content] = str(c.path)
        summary.ingested.append(
            {
                "file": str(c.path),
                "clip_id": clip_id,
                "bytes": len(c.data),
                "width": c.info["width"],
                "height": c.info["height"],
                "fps": c.info["fps"],
                "has_audio": c.info["has_audio"],
                "labels": sorted(matched),
                "windows": len(record.get("windows", ())),
            }
        )


@dataclass(frozen=True)
class WindowPlan:
    """How ingest cuts long files: fixed windows of ``length`` s every ``stride`` s, or windows
    at scene cuts of ``scenes = (min, max)`` seconds (:mod:`veilfed.data.windows`)."""

    length: float | None = None
    stride: float | None = None
    scenes: tuple[float, float] | None = None

    def windows(self, path: Path, duration: float) -> list[Window]:
        if self.scenes is not None:
            return scene_windows(path, self.scenes[0], self.scenes[1], name=str(path))
        return plan_windows(duration, self.length or duration, self.stride, name=str(path))


@dataclass
class Prepared:
    """What ingest will store with each file, checked before the store is touched."""

    labels: dict[Path, dict[str, Any]] = field(default_factory=dict)
    windows: dict[Path, list[Window]] = field(default_factory=dict)


Labels = Mapping[str, dict[str, Any]] | str | Path | Sequence[LabelSource] | None


def prepare(
    files: Sequence[Path],
    labels: Labels = None,
    specs: Mapping[str, TaskSpec] | None = None,
    windows: WindowPlan | None = None,
) -> Prepared:
    """Read and check every label source and window plan against ``files`` (module docstring).

    ``labels``: ``--labels`` sources, one labels file, or a table ``{video key: {task: value}}``
    already in stored form; ``specs``: the declared tasks (default: the synthetic preset's).
    """
    specs = dict(specs) if specs is not None else task_specs(dict.fromkeys(schema.TASKS, 1.0))
    facts: dict[Path, dict[str, Any]] = {}
    for path in files:
        try:
            facts[path] = video.probe(path)
        except (video.VideoError, OSError):
            continue  # reported with its reason when the file is ingested
    if labels is None:
        table, origin = {}, {}
    elif isinstance(labels, Mapping):
        table, origin = dict(labels), {}
    else:
        sources = [LabelSource(Path(labels))] if isinstance(labels, str | Path) else labels
        by_key = {k: ps[0] for k, ps in video_keys(facts).items() if len(ps) == 1}
        fps = {k: float(facts[p]["fps"]) for k, p in by_key.items() if facts[p]["fps"]}
        lengths = {k: d for k, p in by_key.items() if (d := video.probed_duration(facts[p]))}
        table, origin = read_sources(sources, specs, fps, lengths)
    prepared = Prepared(labels=match(table, origin, files))
    if windows is not None:
        for path, f in facts.items():
            prepared.windows[path] = windows.windows(path, video.probed_duration(f) or 0.0)
    return prepared


def ingest(
    paths: Iterable[str | Path],
    store: EncryptedStore,
    labels: Labels = None,
    specs: Mapping[str, TaskSpec] | None = None,
    windows: WindowPlan | None = None,
) -> IngestSummary:
    """Probe, validate and encrypt each file into ``store``; unreadable files are skipped.

    ``labels``, ``specs`` and ``windows``: see :func:`prepare`.
    """
    files = list(iter_sources(paths))
    plan = prepare(files, labels, specs, windows)
    summary = IngestSummary(str(store.root))
    with store.batch():
        _add(store, _candidates(files, summary), plan, summary)
    return summary


def ingest_to(
    root: str | Path,
    key: FernetKey,
    paths: Iterable[str | Path],
    labels: Labels = None,
    specs: Mapping[str, TaskSpec] | None = None,
    windows: WindowPlan | None = None,
) -> IngestSummary:
    """Like :func:`ingest` into the store at ``root``, creating it at the first good video.

    When no file is a usable video, or a label or window is bad, nothing is created: a failed
    first ingest leaves no store.
    """
    files = list(iter_sources(paths))
    plan = prepare(files, labels, specs, windows)
    summary = IngestSummary(str(root))
    candidates = _candidates(files, summary)
    first = next(candidates, None)
    if first is None:
        return summary
    store = EncryptedStore.create(root, key, exist_ok=True)
    with store.batch():
        _add(store, itertools.chain([first], candidates), plan, summary)
    return summary
