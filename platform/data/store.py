"""Encrypted clip store: video exists in plaintext only in memory, never on disk.

API (a :class:`ClipSource` for ``veilfed.data.dataset``)::

    store = EncryptedStore.create(dir, key)          # key: FernetKey (veilfed.crypto.keys)
    with store.batch():                              # one manifest write for many puts
        store.put(clip_id, mp4_bytes, labels_dict)
    store = EncryptedStore.open(dir, key)            # or open(dir, [new_key, old_key])
    store.ids(); store.read(clip_id) -> (mp4_bytes, labels); store.verify() -> n clips
    rotate_store(dir, old_key, new_key)              # crash-safe, resumable re-encryption

Layout of ``DIR``::

    store.json        {"format": "veilfed-store", "version": 1, "key_id": <one-way key fingerprint>,
                       "manifest": base64(raw Fernet token of the manifest JSON)}
    clips/<rand>.vfc  b"VFCLIP\\0\\1", then records (u32 big-endian length, raw Fernet token):
                      the labels record, then the clip's video chunks in order

Each token's plaintext starts with a header binding it to its place: kind (labels/video), clip id,
chunk index, chunk count, total length and the clip's random nonce (new on every put). The manifest
(encrypted, so clip ids stay private too) lists every clip's file, chunk count, total length and
nonce. A reader checks every header against the manifest, so reordering, dropping, duplicating,
truncating, swapping chunks between clips or replaying an older version of a clip is detected, and
a clip is returned only when every chunk has been checked (no partial plaintext).

Writes are atomic (``veilfed.io``). One writer at a time; any number of readers (DataLoader workers
receive the store by pickle and open clip files themselves).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import secrets
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from cryptography.fernet import MultiFernet

from veilfed.crypto.keys import FernetKey, InvalidToken, armor, unarmor
from veilfed.errors import CheckFailed, UsageError
from veilfed.io import write_bytes_atomic, write_text_atomic

FORMAT = "veilfed-store"
VERSION = 1
DEFAULT_CHUNK_SIZE = 1 << 20
CLIP_MAGIC = b"VFCLIP\x00\x01"
KIND_LABELS = 0
KIND_VIDEO = 1
_KIND_NAMES = {KIND_LABELS: "labels record", KIND_VIDEO: "chunk"}
# magic, kind, id length, chunk index, chunk count, total length, clip nonce; then the clip id.
_HDR = struct.Struct(">4sBxHIIQ16s")
_HDR_MAGIC = b"VFS1"
_LEN = struct.Struct(">I")


@dataclass(frozen=True)
class ClipEntry:
    """What the manifest knows about one clip."""

    file: str
    chunks: int
    length: int
    nonce: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "chunks": self.chunks,
            "length": self.length,
            "nonce": self.nonce.hex(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClipEntry:
        return cls(str(d["file"]), int(d["chunks"]), int(d["length"]), bytes.fromhex(d["nonce"]))


class Record(NamedTuple):
    """One decrypted record: its binding header and payload."""

    kind: int
    clip_id: str
    index: int
    count: int
    total: int
    nonce: bytes
    payload: memoryview


def _keys(key: FernetKey | Sequence[FernetKey]) -> tuple[FernetKey, ...]:
    keys = (key,) if isinstance(key, FernetKey) else tuple(key)
    if not keys:
        raise UsageError("no key given; pass --key-file")
    return keys


def seal_record(
    key: FernetKey,
    clip_id: str,
    kind: int,
    index: int,
    count: int,
    total: int,
    nonce: bytes,
    payload: bytes | memoryview,
) -> bytes:
    """Encrypt one record with its binding header."""
    cid = clip_id.encode()
    header = _HDR.pack(_HDR_MAGIC, kind, len(cid), index, count, total, nonce) + cid
    return key.encrypt(header + payload)


def open_record(keys: Sequence[FernetKey], token: bytes | memoryview) -> Record:
    """Decrypt a record (with the first key that authenticates it) and parse its header."""
    for key in keys:
        try:
            plain = key.decrypt(token)
            break
        except InvalidToken:
            continue
    else:
        raise InvalidToken
    if len(plain) < _HDR.size:
        raise InvalidToken
    magic, kind, id_len, index, count, total, nonce = _HDR.unpack_from(plain)
    if magic != _HDR_MAGIC:
        raise InvalidToken
    end = _HDR.size + id_len
    clip_id = plain[_HDR.size : end].decode("utf-8", "replace")
    return Record(kind, clip_id, index, count, total, nonce, memoryview(plain)[end:])


def split_records(data: bytes | memoryview, where: str) -> list[memoryview]:
    """Parse a length-prefixed record file body (after its magic)."""
    mv = memoryview(data)
    out: list[memoryview] = []
    pos = 0
    while pos < len(mv):
        if pos + _LEN.size > len(mv):
            raise CheckFailed(f"{where}: truncated after record {len(out) - 1}")
        (n,) = _LEN.unpack_from(mv, pos)
        pos += _LEN.size
        if pos + n > len(mv):
            raise CheckFailed(f"{where}: record {len(out)} is truncated")
        out.append(mv[pos : pos + n])
        pos += n
    return out


def join_records(tokens: Iterable[bytes | memoryview]) -> bytes:
    return b"".join(_LEN.pack(len(t)) + bytes(t) for t in tokens)


def encrypt_clip(
    key: FernetKey, clip_id: str, mp4: bytes, labels: dict[str, Any], chunk_size: int
) -> tuple[list[bytes], int, bytes]:
    """Tokens (labels record first, then video chunks), chunk count and nonce for one clip."""
    nonce = os.urandom(16)
    label_bytes = json.dumps(labels, separators=(",", ":"), sort_keys=True).encode()
    mv = memoryview(mp4)
    count = max(1, -(-len(mv) // chunk_size))
    tokens = [seal_record(key, clip_id, KIND_LABELS, 0, 1, len(label_bytes), nonce, label_bytes)]
    tokens += [
        seal_record(
            key,
            clip_id,
            KIND_VIDEO,
            i,
            count,
            len(mv),
            nonce,
            mv[i * chunk_size : (i + 1) * chunk_size],
        )
        for i in range(count)
    ]
    return tokens, count, nonce


def open_clip(
    keys: Sequence[FernetKey],
    clip_id: str,
    entry: ClipEntry,
    records: Sequence[bytes | memoryview],
    where: str,
    fix: str = "restore it from a backup or ingest it again",
) -> list[Record]:
    """Decrypt a clip's records and check each header against ``entry``; all or nothing."""
    if not records:
        raise CheckFailed(f"{where}: clip {clip_id!r} has no records; {fix}")
    out: list[Record] = []
    for pos, token in enumerate(records):
        what = "labels record" if pos == 0 else f"chunk {pos - 1}"
        try:
            rec = open_record(keys, token)
        except InvalidToken:
            raise CheckFailed(
                f"{where}: clip {clip_id!r} {what} does not decrypt (tampered, damaged or "
                f"wrong key); {fix}"
            ) from None
        want_kind = KIND_LABELS if pos == 0 else KIND_VIDEO
        want_index = 0 if pos == 0 else pos - 1
        problem = None
        if rec.clip_id != clip_id:
            problem = f"belongs to clip {rec.clip_id!r}"
        elif rec.nonce != entry.nonce:
            problem = "is from another version"
        elif rec.kind != want_kind or rec.index != want_index:
            name = _KIND_NAMES.get(rec.kind, "record")
            problem = f"is {name} {rec.index} (out of order or duplicated)"
        elif rec.kind == KIND_VIDEO and (rec.count != entry.chunks or rec.total != entry.length):
            problem = "disagrees with the manifest on chunk count or length"
        elif rec.kind == KIND_LABELS and len(rec.payload) != rec.total:
            problem = "is truncated"
        if problem:
            raise CheckFailed(f"{where}: clip {clip_id!r} {what} {problem}; {fix}")
        out.append(rec)
    if len(records) != entry.chunks + 1:
        raise CheckFailed(
            f"{where}: clip {clip_id!r} has {len(records) - 1} chunks, manifest says "
            f"{entry.chunks} (chunk {min(len(records) - 1, entry.chunks)} missing or extra); {fix}"
        )
    size = sum(len(r.payload) for r in out[1:])
    if size != entry.length:
        raise CheckFailed(
            f"{where}: clip {clip_id!r} is {size} bytes, manifest says {entry.length}; {fix}"
        )
    return out


def decrypt_clip(
    keys: Sequence[FernetKey],
    clip_id: str,
    entry: ClipEntry,
    records: Sequence[bytes | memoryview],
    where: str,
    fix: str = "restore it from a backup or ingest it again",
) -> tuple[bytes, dict[str, Any]]:
    """(video bytes, labels) of a clip whose every record checked out; all or nothing."""
    opened = open_clip(keys, clip_id, entry, records, where, fix)
    try:
        labels = json.loads(bytes(opened[0].payload))
    except ValueError:
        raise CheckFailed(f"{where}: clip {clip_id!r} labels are not JSON; {fix}") from None
    payloads = [r.payload for r in opened[1:]]
    data = payloads[0].tobytes() if len(payloads) == 1 else b"".join(payloads)
    return data, labels


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
        if (root / "store.json").exists():
            if exist_ok:
                return cls.open(root, key)
            raise UsageError(f"{root}: a store already exists here; open it or choose another dir")
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise UsageError(f"{root}: exists and is not an empty directory; choose a new --store")
        if chunk_size < 1024:
            raise UsageError(f"chunk size {chunk_size} is too small; use at least 1024 bytes")
        (root / "clips").mkdir(parents=True, exist_ok=True)
        header = {"format": FORMAT, "version": VERSION, "key_id": key.key_id}
        store = cls(root, (key,), chunk_size, {}, header)
        store.commit()
        return store

    @classmethod
    def open(cls, root: str | Path, key: FernetKey | Sequence[FernetKey]) -> EncryptedStore:
        """Open a store with its key (or a list of keys, of which one must be current)."""
        root = Path(root)
        keys = _keys(key)
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
        return cls(root, (matching[0],), chunk_size, clips, header)

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
        if data[: len(CLIP_MAGIC)] != CLIP_MAGIC:
            raise CheckFailed(f"{path}: clip {clip_id!r} file header is damaged; restore it")
        return split_records(memoryview(data)[len(CLIP_MAGIC) :], f"{path}: clip {clip_id!r}")

    def read(self, clip_id: str) -> tuple[bytes, dict[str, Any]]:
        """Decrypt a clip into memory: (video bytes, labels). Raises CheckFailed if tampered."""
        return decrypt_clip(
            self.keys, clip_id, self.entry(clip_id), self.records(clip_id), str(self.root)
        )

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

    def put(self, clip_id: str, video: bytes, labels: dict[str, Any]) -> None:
        """Encrypt and store a clip (replacing any clip with the same id)."""
        if not clip_id or len(clip_id.encode()) > 1024:
            raise UsageError(f"clip id {clip_id[:40]!r}: must be 1 to 1024 bytes")
        tokens, count, nonce = encrypt_clip(self.keys[0], clip_id, video, labels, self.chunk_size)
        self.put_records(clip_id, tokens, ClipEntry("", count, len(video), nonce))

    def put_many(self, items: Iterable[tuple[str, bytes, dict[str, Any]]]) -> int:
        n = 0
        with self.batch():
            for clip_id, video, labels in items:
                self.put(clip_id, video, labels)
                n += 1
        return n

    def put_records(
        self, clip_id: str, tokens: Sequence[bytes | memoryview], entry: ClipEntry
    ) -> None:
        """Store already-encrypted records unchanged (bundle import, rotation)."""
        name = f"{secrets.token_hex(16)}.vfc"
        write_bytes_atomic(self.root / "clips" / name, CLIP_MAGIC + join_records(tokens), 0o600)
        old = self._clips.get(clip_id)
        if old is not None and old.file != name:
            self._garbage.append(old.file)
        self._clips[clip_id] = ClipEntry(name, entry.chunks, entry.length, entry.nonce)
        if self._batch == 0:
            self.commit()

    def commit(self) -> None:
        """Atomically write the manifest, then delete replaced clip files."""
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
        for name in self._garbage:
            with contextlib.suppress(FileNotFoundError):
                (self.root / "clips" / name).unlink()
        self._garbage.clear()


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


def write_header(root: Path, header: dict[str, Any]) -> None:
    write_text_atomic(root / "store.json", json.dumps(header, indent=1, sort_keys=True) + "\n")


def rotate_store(root: str | Path, old: FernetKey, new: FernetKey) -> int:
    """Re-encrypt every clip and the manifest from ``old`` to ``new`` with MultiFernet.

    Crash-safe: rotated clips go to new files while store.json (manifest under the old key) still
    points at the old ones, so until the single atomic store.json write at the end the store is
    exactly the old store; after it, exactly the new one. Leftovers of a crash are swept on re-run.
    """
    root = Path(root)
    if old == new:
        raise UsageError("old and new key files hold the same key; create one with `keys new`")
    header = read_header(root)
    if header["key_id"] == new.key_id:
        raise UsageError(f"{root}: store is already encrypted with the new key {new.key_id}")
    store = EncryptedStore.open(root, old)
    sweep_orphans(store)
    multi = MultiFernet([new.fernet(), old.fernet()])
    with store.batch():
        for clip_id in store.ids():
            entry = store.entry(clip_id)
            records = store.records(clip_id)
            decrypt_clip((old,), clip_id, entry, records, str(root))  # never rotate a bad clip
            rotated = [unarmor(multi.rotate(armor(bytes(t)))) for t in records]
            store.put_records(clip_id, rotated, entry)
        store.keys = (new,)
    sweep_orphans(store)
    return len(store)


def sweep_orphans(store: EncryptedStore) -> int:
    """Delete clip files and temp files the manifest does not reference (left by a crash)."""
    live = {store.entry(cid).file for cid in store.ids()}
    n = 0
    for path in (store.root / "clips").iterdir():
        if path.name not in live:
            path.unlink(missing_ok=True)
            n += 1
    return n
