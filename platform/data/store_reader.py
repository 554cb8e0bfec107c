"""The store's read side: a :class:`ClipSource` over the clip files a manifest lists.

A reader holds the manifest's :class:`ClipEntry` per clip and the keys, and takes no lock: any
number of them (DataLoader workers receive the store by pickle) open clip files themselves. Every
record's header is checked against the clip's entry (:mod:`veilfed.data.records`), and a clip is
returned only when every chunk has been checked (no partial plaintext); :meth:`StoreReader.labels`
reads and checks only the labels record. A missing, unreadable or tampered clip file is a one-line
``CheckFailed`` naming the clip and what to do. A reader racing a rotation may find a replaced clip
file gone and should rerun.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from veilfed.crypto.keys import FernetKey, InvalidToken
from veilfed.data.records import (
    CLIP_MAGIC,
    KIND_LABELS,
    LEN,
    ClipEntry,
    decrypt_clip,
    open_record,
    split_records,
)
from veilfed.errors import CheckFailed, UsageError


class StoreReader:
    """Read-only access to the clips of one store, checked against its manifest."""

    def __init__(
        self, root: Path, keys: tuple[FernetKey, ...], clips: dict[str, ClipEntry]
    ) -> None:
        self.root = root
        self.keys = keys
        self._clips = clips

    def ids(self) -> list[str]:
        return sorted(self._clips)

    def __len__(self) -> int:
        return len(self._clips)

    def __contains__(self, clip_id: object) -> bool:
        return clip_id in self._clips

    def entry(self, clip_id: str) -> ClipEntry:
        try:
            return self._clips[clip_id]
        except KeyError:
            raise UsageError(f"{self.root}: no clip {clip_id!r} in this store") from None

    def records(self, clip_id: str) -> list[memoryview]:
        """The clip's raw tokens, unopened (for export and rotation)."""
        entry = self.entry(clip_id)
        path = self.root / "clips" / entry.file
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CheckFailed(
                f"{self.root}: clip {clip_id!r} file {path.name} is missing; restore it from a "
                "backup or ingest the clip again"
            ) from None
        except OSError as exc:
            raise CheckFailed(
                f"{path}: clip {clip_id!r} file cannot be read ({exc.strerror}); restore it from "
                "a backup or ingest the clip again"
            ) from None
        if data[: len(CLIP_MAGIC)] != CLIP_MAGIC:
            raise CheckFailed(f"{path}: clip {clip_id!r} file header is damaged; restore it")
        return split_records(memoryview(data)[len(CLIP_MAGIC) :], f"{path}: clip {clip_id!r}")

    def read(self, clip_id: str) -> tuple[bytes, dict[str, Any]]:
        """Decrypt a clip into memory: (video bytes, labels). Raises CheckFailed if tampered."""
        return decrypt_clip(
            self.keys, clip_id, self.entry(clip_id), self.records(clip_id), str(self.root)
        )

    def labels(self, clip_id: str) -> dict[str, Any]:
        """A clip's labels, reading and checking only its first record (not the video)."""
        entry = self.entry(clip_id)
        path = self.root / "clips" / entry.file
        fix = "run `veilfed data verify` and restore the clip from a backup"
        try:
            with path.open("rb") as fh:
                head = fh.read(len(CLIP_MAGIC) + LEN.size)
                size = LEN.unpack_from(head, len(CLIP_MAGIC))[0] if len(head) == 12 else -1
                token = fh.read(size) if size >= 0 else b""
        except OSError as exc:
            raise CheckFailed(
                f"{path}: clip {clip_id!r} cannot be read ({exc.strerror}); {fix}"
            ) from None
        if head[: len(CLIP_MAGIC)] != CLIP_MAGIC or size < 0 or len(token) != size:
            raise CheckFailed(f"{path}: clip {clip_id!r} labels record is damaged; {fix}")
        try:
            rec = open_record(self.keys, token)
            ok = (rec.kind, rec.clip_id, rec.nonce, len(rec.payload)) == (
                KIND_LABELS,
                clip_id,
                entry.nonce,
                rec.total,
            )
            labels = json.loads(bytes(rec.payload)) if ok else None
        except (InvalidToken, ValueError):
            labels = None
        if not isinstance(labels, dict):
            raise CheckFailed(f"{path}: clip {clip_id!r} labels record does not check out; {fix}")
        return labels

    def content_hashes(self) -> dict[str, str]:
        """{digest: clip id} for every clip ingested from a real file.

        Both digests a clip's ``source`` label holds are keys: ``sha256`` (the file's bytes) and
        ``content_sha256`` (its decoded frames and audio, the same across re-muxes).
        """
        out: dict[str, str] = {}
        for clip_id in self.ids():
            source = self.labels(clip_id).get("source")
            for field in ("sha256", "content_sha256"):
                digest = source.get(field) if isinstance(source, dict) else None
                if isinstance(digest, str):
                    out.setdefault(digest, clip_id)
        return out

    def verify(self) -> int:
        """Decrypt and check every clip; raise CheckFailed naming the first bad clip and chunk."""
        if not self._clips:
            raise UsageError(
                f"{self.root}: store is empty; add clips with `veilfed data ingest` or `data synth`"
            )
        for clip_id in self.ids():
            self.read(clip_id)
        return len(self._clips)
