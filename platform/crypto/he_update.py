"""Wire format of one encrypted update or aggregate: a header naming keys, size, contributors.

``MAGIC`` + 4-byte big-endian header length + JSON header + the serialized CKKS chunks back to
back (their lengths and CRC-32s are in the header: a forger can recompute any checksum, so it only
has to catch accidents, and CRC-32 is 3x cheaper than SHA-256 on these tens of megabytes). The
header is the sender's word; ``veilfed.crypto.he.decrypt_average`` verifies what matters.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from veilfed.errors import UsageError

MAGIC = b"VFHEUPD1"


@dataclass
class EncryptedUpdate:
    """One client's encrypted, weighted update, or the coordinator's encrypted sum of several.

    ``size`` counts model values; the chunks hold the ``size`` weighted values then the weight,
    ``slots - RESERVED_SLOTS`` per chunk, then each chunk's tags and a check slot of 1.0 (see
    :func:`chunk_layout`). ``contributors`` labels the updates summed in it, one each.
    ``attested`` records the bounds the client(s) enforced before encrypting (the coordinator cannot
    check them itself); timings are for MLflow (``he/encrypt_ms``, ``he/aggregate_ms``).
    """

    key_id: str
    size: int
    chunks: list[bytes]
    contributors: list[str] = field(default_factory=list)
    attested: dict[str, Any] = field(default_factory=dict)
    encrypt_ms: float = 0.0
    aggregate_ms: float = 0.0

    @property
    def clients(self) -> int:
        """How many updates the header says are summed here (decryption verifies it)."""
        return len(self.contributors)

    def _header(self) -> bytes:
        header = {
            "crc32": [zlib.crc32(c) for c in self.chunks],
            "key_id": self.key_id,
            "size": self.size,
            "contributors": self.contributors,
            "chunks": [len(c) for c in self.chunks],
            "attested": self.attested,
            "encrypt_ms": self.encrypt_ms,
            "aggregate_ms": self.aggregate_ms,
        }
        return json.dumps(header, sort_keys=True).encode()

    def to_bytes(self) -> bytes:
        """One blob for a Flower message (e.g. a ``bytes`` value in a ConfigRecord)."""
        raw = self._header()
        return b"".join([MAGIC, struct.pack(">I", len(raw)), raw, *self.chunks])

    @classmethod
    def from_bytes(cls, blob: bytes) -> EncryptedUpdate:
        """Parse a message; raises UsageError with the reason when it is not a whole HE update."""
        blob = bytes(blob)
        if blob.startswith(b"\x93NUMPY"):
            raise UsageError("sent a plaintext numpy array but HE is required")
        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 4:
            raise UsageError("not an HE update (no veilfed HE header): plaintext or another format")
        (hsize,) = struct.unpack(">I", blob[len(MAGIC) : len(MAGIC) + 4])
        start = len(MAGIC) + 4
        try:
            h = json.loads(blob[start : start + hsize])
            lengths = [int(n) for n in h["chunks"]]
            crcs = [int(c) for c in h["crc32"]]
            update = cls(
                key_id=str(h["key_id"]),
                size=int(h["size"]),
                chunks=[],
                contributors=[str(c) for c in h["contributors"]],
                attested=dict(h["attested"]),
                encrypt_ms=float(h["encrypt_ms"]),
                aggregate_ms=float(h["aggregate_ms"]),
            )
            if update.size < 0 or update.clients < 1:
                raise ValueError(f"size {update.size}, {update.clients} contributors")
            if not isinstance(h["contributors"], list):
                raise ValueError("contributors is not a list")
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"malformed HE update header ({exc})") from None
        body = memoryview(blob)[start + hsize :]
        if len(crcs) != len(lengths):
            raise UsageError("malformed HE update header (chunk and checksum counts differ)")
        if sum(lengths) != len(body) or min(lengths, default=1) <= 0:
            raise UsageError(
                f"truncated or padded HE update: header announces {sum(lengths)} ciphertext bytes, "
                f"message carries {len(body)}"
            )
        offset = 0
        for i, (n, crc) in enumerate(zip(lengths, crcs, strict=True)):
            chunk = bytes(body[offset : offset + n])
            if zlib.crc32(chunk) != crc:
                raise UsageError(f"HE update chunk {i} fails its CRC-32 checksum: corrupted")
            update.chunks.append(chunk)
            offset += n
        return update

    @property
    def wire_bytes(self) -> int:
        """Size of :meth:`to_bytes` without building it."""
        return len(MAGIC) + 4 + len(self._header()) + sum(len(c) for c in self.chunks)

    @property
    def plaintext_bytes(self) -> int:
        """What the same update costs as float32 (the ``he/bytes_ratio`` denominator)."""
        return 4 * self.size

    @property
    def bytes_ratio(self) -> float:
        return self.wire_bytes / max(self.plaintext_bytes, 1)
