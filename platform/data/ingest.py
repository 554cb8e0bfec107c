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

Labels (``--labels FILE``): CSV with a ``file`` column (or ``path``/``clip_id``) or JSON
(``{"name.mp4": {...}}`` or a list of objects with ``file``), matched by path, file name or stem.
``action``/``sentiment`` may be a class name or index, ``moderation`` 0/1/true/false, ``quality`` a
float in [0, 1], ``transcript`` text; other fields are kept as given.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veilfed.crypto.keys import FernetKey
from veilfed.data import schema, video
from veilfed.data.store import EncryptedStore
from veilfed.errors import UsageError

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm"})
_KEY_COLUMNS = ("file", "path", "clip_id")


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


def _coerce(name: str, value: Any, where: str) -> Any:
    """Labels the dataset reads as targets, in the types it expects."""
    classes = {"action": schema.ACTIONS, "sentiment": schema.SENTIMENTS}.get(name)
    text = str(value).strip()
    try:
        if classes is not None:
            if text in classes:
                return classes.index(text)
            index = int(text)
            if not 0 <= index < len(classes):
                raise ValueError
            return index
        if name == "moderation":
            return {"1": 1.0, "0": 0.0, "true": 1.0, "false": 0.0}[text.lower()]
        if name == "quality":
            q = float(text)
            if not 0.0 <= q <= 1.0:
                raise ValueError
            return q
    except (ValueError, KeyError):
        valid = (
            ", ".join(classes)
            if classes
            else {"moderation": "0/1/true/false", "quality": "a number in [0, 1]"}[name]
        )
        raise UsageError(
            f"{where}: field {name!r} = {text[:40]!r} is invalid; use {valid}"
        ) from None
    return value


def load_labels(path: str | Path) -> dict[str, dict[str, Any]]:
    """Labels file -> {key (path, name or stem): labels}."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read labels file ({exc}); check --labels") from None
    rows: list[tuple[str, dict[str, Any]]] = []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(data, dict):
            rows = [(str(k), v) for k, v in data.items()]
        elif isinstance(data, list):
            rows = [
                (str(next((r[c] for c in _KEY_COLUMNS if c in r), "")), r)
                for r in data
                if isinstance(r, dict)
            ]
    else:
        reader = csv.DictReader(text.splitlines())
        key = next((c for c in _KEY_COLUMNS if c in (reader.fieldnames or [])), None)
        if key is None:
            raise UsageError(f"{path}: labels CSV needs a 'file' column naming each video")
        rows = [(row[key], row) for row in reader]
    out: dict[str, dict[str, Any]] = {}
    for n, (name, row) in enumerate(rows, start=1):
        if not name or not isinstance(row, dict):
            raise UsageError(f"{path}: entry {n} has no file name; add a 'file' field")
        where = f"{path}: entry {n} ({name})"
        out[name] = {
            k: _coerce(k, v, where) if k in {"action", "sentiment", "moderation", "quality"} else v
            for k, v in row.items()
            if k not in _KEY_COLUMNS and v not in ("", None)
        }
    return out


def _match(labels: Mapping[str, dict[str, Any]], path: Path) -> dict[str, Any]:
    for key in (str(path), path.name, path.stem):
        if key in labels:
            return labels[key]
    return {}


@dataclass(frozen=True)
class _Candidate:
    path: Path
    data: bytes
    digest: str  # sha256 of the file's bytes
    content: str  # sha256 of its decoded frames and audio (video.content_digest)
    info: dict[str, Any]


def _candidates(paths: Iterable[str | Path], summary: IngestSummary) -> Iterator[_Candidate]:
    """Readable, decodable videos among ``paths``; the rest go to ``summary.skipped``."""
    for path in iter_sources(paths):
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
    that later file on to the next free id; no stored clip is ever replaced."""
    tried = [stem, *(f"{stem}-{digest[:n]}" for n in (8, 16, 64))]
    counted = (f"{stem}-{digest}-{i}" for i in itertools.count(2))
    return next(cid for cid in itertools.chain(tried, counted) if cid not in store)


def _add(
    store: EncryptedStore,
    candidates: Iterable[_Candidate],
    labels: Mapping[str, dict[str, Any]],
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
        matched = _match(labels, c.path)
        source = {"name": c.path.name, "sha256": c.digest, "content_sha256": c.content, **c.info}
        record = {"synthetic": False, "source": source, **matched}
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
            }
        )


def _labels(labels: Mapping[str, dict[str, Any]] | str | Path | None) -> Mapping[str, Any]:
    if labels is None:
        return {}
    return load_labels(labels) if isinstance(labels, str | Path) else labels


def ingest(
    paths: Iterable[str | Path],
    store: EncryptedStore,
    labels: Mapping[str, dict[str, Any]] | str | Path | None = None,
) -> IngestSummary:
    """Probe, validate and encrypt each file into ``store``; unreadable files are skipped.

    ``labels``: what :func:`load_labels` returns, or the labels file to load.
    """
    table = _labels(labels)
    summary = IngestSummary(str(store.root))
    with store.batch():
        _add(store, _candidates(paths, summary), table, summary)
    return summary


def ingest_to(
    root: str | Path,
    key: FernetKey,
    paths: Iterable[str | Path],
    labels: Mapping[str, dict[str, Any]] | str | Path | None = None,
) -> IngestSummary:
    """Like :func:`ingest` into the store at ``root``, creating it at the first good video.

    When no file is a usable video, nothing is created: a failed first ingest leaves no store.
    """
    table = _labels(labels)
    summary = IngestSummary(str(root))
    candidates = _candidates(paths, summary)
    first = next(candidates, None)
    if first is None:
        return summary
    store = EncryptedStore.create(root, key, exist_ok=True)
    with store.batch():
        _add(store, itertools.chain([first], candidates), table, summary)
    return summary
