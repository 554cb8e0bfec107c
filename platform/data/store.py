"""Encrypted clip store: video exists in plaintext only in memory, never on disk.

API (a :class:`ClipSource` for ``veilfed.data.dataset``)::

    store = EncryptedStore.create(dir, key)          # key: FernetKey (veilfed.crypto.keys)
    with store.batch():                              # one manifest write for many puts
        store.put(clip_id, mp4_bytes, labels_dict)
    store = EncryptedStore.open(dir, key)            # or open(dir, [new_key, old_key])
    store.ids(); store.read(clip_id) -> (mp4_bytes, labels); store.verify() -> n clips
    store.labels(clip_id); store.content_hashes()    # labels only; {source digest: clip id}
    from veilfed.data.store_rotate import rotate_store
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
format itself is :mod:`veilfed.data.records`, ``store.json`` and the manifest
:mod:`veilfed.data.store_manifest`, the read side :mod:`veilfed.data.store_reader`, rotation and
the orphan sweep :mod:`veilfed.data.store_rotate`; this module creates, opens and writes.

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

import contextlib
import secrets
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from veilfed.crypto.keys import FernetKey
from veilfed.data.lock import LOCK_NAME, writer_lock
from veilfed.data.records import CLIP_MAGIC, ClipEntry, encrypt_clip, join_records
from veilfed.data.store_manifest import FORMAT, VERSION, load_manifest, write_manifest
from veilfed.data.store_reader import StoreReader
from veilfed.errors import UsageError
from veilfed.io import write_bytes_atomic

DEFAULT_CHUNK_SIZE = 1 << 20


def _keys(key: FernetKey | Sequence[FernetKey]) -> tuple[FernetKey, ...]:
    keys = (key,) if isinstance(key, FernetKey) else tuple(key)
    if not keys:
        raise UsageError("no key given; pass --key-file")
    return keys


class EncryptedStore(StoreReader):
    """A directory of Fernet-encrypted clips with an encrypted, authenticated manifest."""

    def __init__(
        self,
        root: Path,
        keys: tuple[FernetKey, ...],
        chunk_size: int,
        clips: dict[str, ClipEntry],
        header: dict[str, Any],
    ) -> None:
        super().__init__(root, keys, clips)
        self.chunk_size = chunk_size
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
        header, current, chunk_size, clips = load_manifest(root, _keys(key))
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
            header, current, chunk_size, clips = load_manifest(self.root, self.keys)
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
        self._header = write_manifest(
            self.root, self._header, self.keys[0], self.chunk_size, self._clips
        )
