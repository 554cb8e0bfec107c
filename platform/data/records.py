"""The store's record format: Fernet tokens bound to their place in a clip.

A clip file (``clips/<rand>.vfc``) and a shard bundle hold the same records: ``CLIP_MAGIC`` (clip
files only), then records as (u32 big-endian length, raw Fernet token). A clip's first record is its
labels, then its video chunks in order. Each token's plaintext starts with a header binding it to
its place (kind, clip id, chunk index, chunk count, total length, the clip's random nonce), so a
reader that checks every header against the manifest's :class:`ClipEntry` detects reordering,
dropping, duplicating, truncating, swapping chunks between clips and replaying an older version.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from veilfed.crypto.keys import FernetKey, InvalidToken
from veilfed.errors import CheckFailed

CLIP_MAGIC = b"VFCLIP\x00\x01"
KIND_LABELS = 0
KIND_VIDEO = 1
_KIND_NAMES = {KIND_LABELS: "labels record", KIND_VIDEO: "chunk"}
# magic, kind, id length, chunk index, chunk count, total length, clip nonce; then the clip id.
_HDR = struct.Struct(">4sBxHIIQ16s")
_HDR_MAGIC = b"VFS1"
LEN = struct.Struct(">I")  # record length prefix


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
        if pos + LEN.size > len(mv):
            raise CheckFailed(f"{where}: truncated after record {len(out) - 1}")
        (n,) = LEN.unpack_from(mv, pos)
        pos += LEN.size
        if pos + n > len(mv):
            raise CheckFailed(f"{where}: record {len(out)} is truncated")
        out.append(mv[pos : pos + n])
        pos += n
    return out


def join_records(tokens: Iterable[bytes | memoryview]) -> bytes:
    return b"".join(LEN.pack(len(t)) + bytes(t) for t in tokens)


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
