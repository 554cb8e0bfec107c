"""Encrypted clip store: video exists in plaintext only in memory, never on disk.

API (a :class:`ClipSource` for ``veilfed.data.dataset``)::

    store = EncryptedStore.create(dir, key)          # key: FernetKey (veilfed.crypto.keys)
    with store.batch():                              # one manifest write for many puts
        store.put(clip_id, mp4_bytes, labels_dict)
    store = EncryptedStore.open(dir, key)            # or open(dir, [new_key, old_key])
    store.ids(); store.read(clip_id) -> (mp4_bytes, labels); store.verify() -> n clips
    store.labels(clip_id); store.content_hashes()    # labels only; {source digest: clip id}
    rotate_store(dir, old_key, new_key)              # crash-safe, resumable re-encryption

Layout of ``DIR``::

    store.json        {"format": "veilfed-store", "version": 1, "key_id": <one-way key fingerprint>,
                       "manifest": base64(raw Fernet token of the manifest JSON)}
    clips/<rand>.vfc  b"VFCLIP\\0\\1", then records (u32 big-endian length, raw Fernet token):
                      the labels record, then the clip's video chunks in order
    store.lock        the writer lock (empty; see below)

Each token's plaintext starts with a header binding it to its place: kind (labels/video), clip id,
chunk index, chunk count, total length and the clip's random nonce (new on every put). The manifest
(encrypted, so clip ids stay private too) lists every clip's file, chunk count, total length and
nonce. A reader checks every header against the manifest, so reordering, dropping, duplicating,
truncating, swapping chunks between clips or replaying an older version of a clip is detected, and
a clip is returned only when every chunk has been checked (no partial plaintext). The record
format itself is :mod:`veilfed.data.records`.

Writes are atomic (``veilfed.io``). One writer at a time, enforced across processes by the store's
writer lock (``DIR/store.lock``, :mod:`veilfed.data.lock`): every write (``put`` outside a batch, a
whole ``batch()`` block, ``rotate_store``) takes the lock, re-reads the manifest from disk under it
and commits before releasing it, so a concurrent writer waits (bounded, then a one-line refusal)
instead of overwriting the other's manifest, and the orphan sweep can never delete a clip file a
live writer has yet to commit. Any number of readers take no lock (DataLoader workers receive the
store by pickle and open clip files themselves); a reader racing a rotation may find a replaced clip
file gone and should rerun.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import secrets
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cryptography.fernet import MultiFernet

from veilfed.crypto.keys import FernetKey, InvalidToken, armor, unarmor
from veilfed.data.lock import LOCK_NAME, writer_lock
from veilfed.data.records import (
    CLIP_MAGIC,
    KIND_LABELS,
    KIND_VIDEO,
    LEN,
    ClipEntry,
    Record,
    decrypt_clip,
    encrypt_clip,
    join_records,
    open_clip,
    open_record,
    seal_record,
    split_records,
)
from veilfed.errors import CheckFailed, UsageError
from veilfed.io import write_bytes_atomic, write_text_atomic

__all__ = [  # the record format is re-exported: callers import it from here
    "CLIP_MAGIC",
    "KIND_LABELS",
    "KIND_VIDEO",
    "ClipEntry",
    "EncryptedStore",
    "Record",
    "decrypt_clip",
    "encrypt_clip",
    "join_records",
    "open_clip",
    "open_record",
    "read_header",
    "rotate_store",
    "seal_record",
    "split_records",
    "sweep_orphans",
    "write_header",
]

log = logging.getLogger(__name__)

FORMAT = "veilfed-store"
VERSION = 1
DEFAULT_CHUNK_SIZE = 1 << 20


def _keys(key: FernetKey | Sequence[FernetKey]) -> tuple[FernetKey, ...]:
    keys = (key,) if isinstance(key, FernetKey) else tuple(key)
    if not keys:
        raise UsageError("no key given; pass --key-file")
    return keys


class EncryptedStore:
    """A directory of Fernet-encrypted clips with an encrypted, authenticated manifest."""

    def __init__(
        self,
        root: Path,
        keys: tuple[FernetKey, ...],
        chunk_size: int,
        clips: dict[str, ClipEntry],
        header: dict[str, Any],
    ) -> None:
        self.root = root
        self.keys = keys
        self.chunk_size = chunk_size
        self._clips = clips
        self._header = header
        self._batch = 0
        self._garbage: list[str] = []
        self._lock: contextlib.ExitStack | None = None
        self._lock_depth = 0

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for DataLoader workers, which only read: the writer lock stays here."""
        return {**self.__dict__, "_lock": None, "_lock_depth": 0, "_batch": 0, "_garbage": []}

    # ---- creating and opening -------------------------------------------------------------
    @classmethod
    def create(
        cls,
        root: str | Path,
        key: FernetKey,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        exist_ok: bool = False,
    ) -> EncryptedStore:
        """A new empty store at ``root`` (or the existing one there when ``exist_ok``)."""
        root = Path(root)
        if chunk_size < 1024:
            raise UsageError(f"chunk size {chunk_size} is too small; use at least 1024 bytes")
        if (root / "store.json").exists():
            if exist_ok:
                return cls.open(root, key)
            raise UsageError(f"{root}: a store already exists here; open it or choose another dir")
        if root.exists() and not root.is_dir():
            raise UsageError(f"{root}: exists and is not a directory; choose a new --store")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{root}: cannot create the store ({exc.strerror})") from None
        with writer_lock(root):  # two creators of one new store: one creates, one opens
            if (root / "store.json").exists():
                if exist_ok:
                    return cls.open(root, key)
                raise UsageError(
                    f"{root}: a store already exists here; open it or choose another dir"
                )
            if any(p.name != LOCK_NAME for p in root.iterdir()):
                raise UsageError(
                    f"{root}: exists and is not an empty directory; choose a new --store"
                )
            (root / "clips").mkdir(exist_ok=True)
            header = {"format": FORMAT, "version": VERSION, "key_id": key.key_id}
            store = cls(root, (key,), chunk_size, {}, header)
            store._write_manifest()
        return store

    @classmethod
    def open(cls, root: str | Path, key: FernetKey | Sequence[FernetKey]) -> EncryptedStore:
        """Open a store with its key (or a list of keys, of which one must be current)."""
        root = Path(root)
        header, current, chunk_size, clips = _load(root, _keys(key))
        return cls(root, (current,), chunk_size, clips, header)

    # ---- the writer lock ------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[EncryptedStore]:
        """Hold the store's writer lock for the block (re-entrant within this object).

        On first acquisition the manifest is re-read from disk, so what this writer commits
        builds on every clip another writer committed before it. A store re-encrypted meanwhile
        (``keys rotate``) is a one-line refusal: this writer's key no longer opens it.
        """
        if self._lock is not None:
            self._lock_depth += 1
            try:
                yield self
            finally:
                self._lock_depth -= 1
            return
        with contextlib.ExitStack() as stack:
            stack.enter_context(writer_lock(self.root))
            header, current, chunk_size, clips = _load(self.root, self.keys)
            self._header, self.keys, self.chunk_size, self._clips = (
                header,
                (current,),
                chunk_size,
                clips,
            )
            self._lock, self._lock_depth = stack, 1
            try:
                yield self
            finally:
                self._lock, self._lock_depth = None, 0

    # ---- ClipSource -----------------------------------------------------------------------
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

    # ---- writing --------------------------------------------------------------------------
    @contextlib.contextmanager
    def batch(self) -> Iterator[EncryptedStore]:
        """Defer the manifest write to the end of the block (one write for many puts).

        If the block raises, nothing is committed: the on-disk store stays as it was (files
        already written are unreferenced and swept by the next rotation).
        """
        with self.locked():
            snapshot = (dict(self._clips), list(self._garbage), self.keys)
            self._batch += 1
            try:
                yield self
            except BaseException:
                self._clips, self._garbage, self.keys = snapshot
                raise
            finally:
                self._batch -= 1
            if self._batch == 0:
                self.commit()

    def put(
        self, clip_id: str, video: bytes, labels: dict[str, Any], *, replace: bool = False
    ) -> None:
        """Encrypt and store a clip under a new id; an existing id is replaced only if ``replace``.

        Refusing by default means no caller can lose a stored clip to an id collision.
        """
        if not clip_id or len(clip_id.encode()) > 1024:
            raise UsageError(f"clip id {clip_id[:40]!r}: must be 1 to 1024 bytes")
        if self._batch == 0:
            with self.batch():
                self.put(clip_id, video, labels, replace=replace)
            return
        self._check_free(clip_id, replace)
        tokens, count, nonce = encrypt_clip(self.keys[0], clip_id, video, labels, self.chunk_size)
        self.put_records(clip_id, tokens, ClipEntry("", count, len(video), nonce), replace=replace)

    def put_many(self, items: Iterable[tuple[str, bytes, dict[str, Any]]]) -> int:
        n = 0
        with self.batch():
            for clip_id, video, labels in items:
                self.put(clip_id, video, labels)
                n += 1
        return n

    def put_records(
        self,
        clip_id: str,
        tokens: Sequence[bytes | memoryview],
        entry: ClipEntry,
        *,
        replace: bool = False,
    ) -> None:
        """Store already-encrypted records unchanged (bundle import, rotation); see :meth:`put`."""
        if self._batch == 0:
            with self.batch():
                self.put_records(clip_id, tokens, entry, replace=replace)
            return
        self._check_free(clip_id, replace)
        name = f"{secrets.token_hex(16)}.vfc"
        write_bytes_atomic(self.root / "clips" / name, CLIP_MAGIC + join_records(tokens), 0o600)
        old = self._clips.get(clip_id)
        if old is not None and old.file != name:
            self._garbage.append(old.file)
        self._clips[clip_id] = ClipEntry(name, entry.chunks, entry.length, entry.nonce)

    def _check_free(self, clip_id: str, replace: bool) -> None:
        if not replace and clip_id in self._clips:
            raise UsageError(
                f"{self.root}: clip {clip_id!r} is already in the store; choose another id "
                "(a stored clip is replaced only on explicit request)"
            )

    def commit(self) -> None:
        """Atomically write the manifest, then delete replaced clip files (lock held)."""
        if self._lock is None:
            raise RuntimeError("the manifest is committed only inside batch()")
        self._write_manifest()
        for name in self._garbage:
            with contextlib.suppress(FileNotFoundError):
                (self.root / "clips" / name).unlink()
        self._garbage.clear()

    def _write_manifest(self) -> None:
        manifest = {
            "chunk_size": self.chunk_size,
            "clips": {cid: e.to_json() for cid, e in sorted(self._clips.items())},
        }
        token = self.keys[0].encrypt(json.dumps(manifest, separators=(",", ":")).encode())
        self._header = {
            **self._header,
            "key_id": self.keys[0].key_id,
            "manifest": base64.b64encode(token).decode(),
        }
        write_header(self.root, self._header)


def read_header(root: Path) -> dict[str, Any]:
    path = root / "store.json"
    if not path.is_file():
        raise UsageError(
            f"{root}: not a veilfed store (no store.json); create one with `veilfed data ingest` "
            "or `veilfed data synth --store`"
        )
    try:
        header = json.loads(path.read_text())
        if header.get("format") != FORMAT or "manifest" not in header or "key_id" not in header:
            raise ValueError
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise CheckFailed(
            f"{path}: store manifest is truncated or damaged; restore store.json from a backup"
        ) from None
    if header.get("version") != VERSION:
        raise UsageError(f"{path}: store format version {header.get('version')} is not supported")
    return header


def _load(
    root: Path, keys: Sequence[FernetKey]
) -> tuple[dict[str, Any], FernetKey, int, dict[str, ClipEntry]]:
    """(header, the key among ``keys`` that opens it, chunk size, clips) of the store."""
    header = read_header(root)
    matching = [k for k in keys if k.key_id == header["key_id"]]
    if not matching:
        names = ", ".join(k.key_id for k in keys)
        raise UsageError(
            f"{root}: store is encrypted with key {header['key_id']}, not key {names}; "
            "use the store's current key file (an old key stops working after `keys rotate`)"
        )
    try:
        token = base64.b64decode(header["manifest"], validate=True)
        manifest = json.loads(matching[0].decrypt(token))
        clips = {cid: ClipEntry.from_json(e) for cid, e in manifest["clips"].items()}
        chunk_size = int(manifest["chunk_size"])
    except (InvalidToken, binascii.Error, ValueError, KeyError, TypeError, AttributeError):
        raise CheckFailed(
            f"{root / 'store.json'}: manifest does not authenticate (tampered or damaged); "
            "restore store.json from a backup"
        ) from None
    return header, matching[0], chunk_size, clips


def write_header(root: Path, header: dict[str, Any]) -> None:
    write_text_atomic(root / "store.json", json.dumps(header, indent=1, sort_keys=True) + "\n")


def rotate_store(root: str | Path, old: FernetKey, new: FernetKey) -> int:
    """Re-encrypt every clip and the manifest from ``old`` to ``new`` with MultiFernet.

    Crash-safe: rotated clips go to new files while store.json (manifest under the old key) still
    points at the old ones, so until the single atomic store.json write at the end the store is
    exactly the old store; after it, exactly the new one. Leftovers of a crash are swept on re-run.
    The writer lock is held throughout: no other writer's clip is swept or left under the old key.
    """
    root = Path(root)
    if old == new:
        raise UsageError("old and new key files hold the same key; create one with `keys new`")
    header = read_header(root)
    if header["key_id"] == new.key_id:
        raise UsageError(f"{root}: store is already encrypted with the new key {new.key_id}")
    store = EncryptedStore.open(root, old)
    with store.locked():
        sweep_orphans(store)
        multi = MultiFernet([new.fernet(), old.fernet()])
        with store.batch():
            for clip_id in store.ids():
                entry = store.entry(clip_id)
                records = store.records(clip_id)
                decrypt_clip((old,), clip_id, entry, records, str(root))  # never rotate a bad clip
                rotated = [unarmor(multi.rotate(armor(bytes(t)))) for t in records]
                store.put_records(clip_id, rotated, entry, replace=True)
            store.keys = (new,)
        sweep_orphans(store)
    return len(store)


def sweep_orphans(store: EncryptedStore) -> int:
    """Delete clip files and temp files the manifest does not reference (left by a crash).

    Runs under the writer lock, so a file is an orphan only if no writer can still commit it.
    Anything that is not a plain file (a directory someone put there) is left alone.
    """
    n = 0
    with store.locked():
        live = {store.entry(cid).file for cid in store.ids()}
        for path in (store.root / "clips").iterdir():
            if path.name in live:
                continue
            if path.is_dir() and not path.is_symlink():
                log.warning("%s: not a clip file; left in place", path)
                continue
            path.unlink(missing_ok=True)
            n += 1
    return n
