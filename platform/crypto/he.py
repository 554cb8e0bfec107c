"""CKKS secure aggregation: clients encrypt weighted updates, the coordinator sums ciphertexts.

Protocol (docs/he.md): a client flattens its (already DP-noised) update, checks it is finite and
within the bounds the parameters were sized for, multiplies it by its sample count and appends the
count as one extra value, then encrypts the vector in as few ciphertexts as the ring allows, each
ciphertext's last slot holding 1.0. The coordinator, holding only the public context, checks each
message's key id, checksum and shape, sums the ciphertexts chunk by chunk and returns the
encrypted sum. Each client decrypts, checks that every chunk's last slot decrypts to the number of
clients summed (a chunk under a foreign key, corrupted, or wrapped around the modulus does not)
and that the total sample count is an integer, then divides.

Wire format of :class:`EncryptedUpdate`: ``MAGIC`` + 4-byte big-endian header length + JSON header
+ the serialized CKKS chunks back to back (their lengths and CRC-32s are in the header: a forger
can recompute any checksum, so it only has to catch accidents, and CRC-32 is 3x cheaper than SHA-256
on these tens of megabytes).
"""

from __future__ import annotations

import json
import logging
import math
import struct
import time
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tenseal as ts

from veilfed.crypto.he_keys import HEContext, keygen, load_context, new_context, public_view
from veilfed.crypto.he_packing import ArraySpec, flatten, unflatten
from veilfed.crypto.he_params import HEParams
from veilfed.errors import CheckFailed, UsageError

__all__ = [
    "ArraySpec",
    "Decrypted",
    "EncryptedUpdate",
    "HEContext",
    "HEParams",
    "Rejection",
    "aggregate",
    "decrypt_average",
    "encrypt_update",
    "flatten",
    "keygen",
    "load_context",
    "new_context",
    "public_view",
    "shadow_average",
    "unflatten",
]

log = logging.getLogger(__name__)

MAGIC = b"VFHEUPD1"
# Half-width of the band around an integer the check slots and the total sample count must decrypt
# into. Honest noise there is < 1e-4 for every parameter set here; a chunk under another key,
# corrupted, or wrapped around the modulus decrypts to values spread over the whole capacity, so
# its check slot lands within the band of the known client count with probability ~0.02/capacity.
COUNT_TOLERANCE = 0.01


@dataclass
class EncryptedUpdate:
    """One client's encrypted, weighted update, or the coordinator's encrypted sum of several.

    ``size`` counts model values; the chunks hold the ``size`` weighted values then the weight,
    ``slots - 1`` per chunk, and a last check slot of 1.0 each (see :func:`chunk_layout`).
    ``attested`` records the bounds the client(s) enforced before encrypting (the coordinator cannot
    check them itself); timings are for MLflow (``he/encrypt_ms``, ``he/aggregate_ms``).
    """

    key_id: str
    size: int
    chunks: list[bytes]
    clients: int = 1
    attested: dict[str, Any] = field(default_factory=dict)
    encrypt_ms: float = 0.0
    aggregate_ms: float = 0.0

    def _header(self) -> bytes:
        header = {
            "crc32": [zlib.crc32(c) for c in self.chunks],
            "key_id": self.key_id,
            "size": self.size,
            "clients": self.clients,
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
                clients=int(h["clients"]),
                attested=dict(h["attested"]),
                encrypt_ms=float(h["encrypt_ms"]),
                aggregate_ms=float(h["aggregate_ms"]),
            )
            if update.size < 0 or update.clients < 1:
                raise ValueError(f"size {update.size}, clients {update.clients}")
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


@dataclass(frozen=True)
class Rejection:
    client: str
    reason: str


@dataclass(frozen=True)
class Decrypted:
    """A client's view of the round: the averaged update and what it was averaged over."""

    average: np.ndarray
    total_weight: int
    clients: int
    decrypt_ms: float
    error_bound: float


def encrypt_update(
    ctx: HEContext,
    flat: np.ndarray,
    weight: int,
    max_l2: float | None = None,
    reference: np.ndarray | None = None,
) -> EncryptedUpdate:
    """Check, weight and encrypt one client's flat update (client side; needs the secret context).

    ``weight`` is the client's sample count; it is encrypted too, so the coordinator never learns
    it. The checks are the client's side of robustness: the coordinator sees only ciphertexts.
    With ``reference`` (the global model the client started from, when ``flat`` holds full
    weights), ``max_l2`` bounds the distance ``flat - reference`` instead of ``flat`` itself.
    """
    if not ctx.is_private:
        raise UsageError("encrypting an update needs the secret HE context (secret.ctx)")
    params = ctx.params
    if isinstance(weight, bool) or not isinstance(weight, int | np.integer):
        raise UsageError(f"HE weight must be an integer sample count, got {weight!r}")
    if not 1 <= weight <= params.max_total_weight:
        raise UsageError(
            f"HE weight {weight} outside [1, {params.max_total_weight}] the keys were sized for; "
            "regenerate keys with a larger max total weight"
        )
    values = np.asarray(flat, dtype=np.float64).ravel()
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise CheckFailed(f"update has {bad} non-finite values (NaN/Inf); refusing to encrypt it")
    peak = float(np.max(np.abs(values), initial=0.0))
    if peak > params.max_abs_update:
        raise CheckFailed(
            f"update value {peak:.4g} exceeds the HE bound max_abs_update={params.max_abs_update}"
        )
    if max_l2 is not None:
        moved = values if reference is None else values - np.asarray(reference, np.float64).ravel()
        norm = float(np.linalg.norm(moved))
        if norm > max_l2:
            raise CheckFailed(f"update L2 norm {norm:.4g} exceeds the norm bound {max_l2}")
    start = time.perf_counter()
    packed = np.append(values * float(weight), float(weight))
    chunks = [
        ts.ckks_vector(ctx.ts_context, np.append(packed[lo:hi], 1.0)).serialize()
        for lo, hi in chunk_layout(values.size, params.slots)
    ]
    attested = {"finite": True, "max_abs": params.max_abs_update, "max_l2": max_l2}
    return EncryptedUpdate(
        key_id=ctx.key_id,
        size=values.size,
        chunks=chunks,
        attested=attested,
        encrypt_ms=(time.perf_counter() - start) * 1e3,
    )


def aggregate(
    ctx: HEContext,
    updates: Mapping[str, Any],
    expected_size: int | None = None,
    require_max_l2: float | None = None,
) -> tuple[EncryptedUpdate | None, list[Rejection]]:
    """Sum encrypted updates without any secret key (coordinator side).

    ``updates`` maps client id to a message (bytes) or an :class:`EncryptedUpdate`. Anything that
    cannot be summed safely is left out with a logged reason and the rest are aggregated. Without
    ``expected_size`` the most common size wins. Returns ``None`` when nothing was accepted.
    """
    start = time.perf_counter()
    rejections: list[Rejection] = []

    def reject(client: str, reason: str) -> None:
        log.warning("HE update from client %s rejected: %s", client, reason)
        rejections.append(Rejection(client, reason))

    parsed: dict[str, EncryptedUpdate] = {}
    for client, message in updates.items():
        try:
            parsed[client] = _parse(message)
        except UsageError as exc:
            reject(client, str(exc))
    if expected_size is None and parsed:
        expected_size = Counter(u.size for u in parsed.values()).most_common(1)[0][0]

    acc: list[ts.CKKSVector] | None = None
    accepted: list[EncryptedUpdate] = []
    for client, update in parsed.items():
        reason = _mismatch(ctx, update, expected_size, require_max_l2)
        if reason:
            reject(client, reason)
            continue
        try:
            vectors = _load_chunks(ctx, update)
            acc = vectors if acc is None else [a + v for a, v in zip(acc, vectors, strict=True)]
        except (ValueError, RuntimeError, TypeError) as exc:
            reject(client, f"ciphertext does not fit this context ({exc})")
            continue
        accepted.append(update)

    if acc is None:
        return None, rejections
    l2_bounds = [u.attested.get("max_l2") for u in accepted]
    total = EncryptedUpdate(
        key_id=ctx.key_id,
        size=accepted[0].size,
        chunks=[v.serialize() for v in acc],
        clients=sum(u.clients for u in accepted),
        attested={
            "finite": True,
            "max_abs": max(float(u.attested.get("max_abs", math.inf)) for u in accepted),
            "max_l2": None if None in l2_bounds else max(l2_bounds),
        },
        encrypt_ms=float(np.mean([u.encrypt_ms for u in accepted])),
    )
    total.aggregate_ms = (time.perf_counter() - start) * 1e3
    return total, rejections


def decrypt_average(ctx: HEContext, agg: EncryptedUpdate | bytes) -> Decrypted:
    """Decrypt the encrypted sum and divide by the decrypted total sample count (client side)."""
    if not ctx.is_private:
        raise UsageError("decrypting the aggregate needs the secret HE context (secret.ctx)")
    update = agg if isinstance(agg, EncryptedUpdate) else EncryptedUpdate.from_bytes(agg)
    if update.key_id != ctx.key_id:
        raise UsageError(
            f"aggregate was encrypted under HE key {update.key_id[:8]}, this client holds "
            f"{ctx.key_id[:8]}; load the current secret.ctx"
        )
    start = time.perf_counter()
    try:
        parts = [np.asarray(v.decrypt(), dtype=np.float64) for v in _load_chunks(ctx, update)]
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"aggregate ciphertext does not fit this HE context ({exc})") from None
    checks = np.array([p[-1] for p in parts])
    values = np.concatenate([p[:-1] for p in parts])
    weight_sum = float(values[update.size])
    total = round(weight_sum)
    limit = 2 * ctx.params.max_total_weight
    worst = float(np.max(np.abs(checks - update.clients)))
    if worst > COUNT_TOLERANCE or abs(weight_sum - total) > COUNT_TOLERANCE or total < 1:
        raise CheckFailed(
            f"HE aggregate of {update.clients} clients failed its integrity check: check slots "
            f"off by up to {worst:.3g}, total sample count decrypts to {weight_sum:.6g} (an "
            "update under another key, corrupted, or beyond the keys' capacity); discard the round"
        )
    if total > limit:
        raise CheckFailed(
            f"HE aggregate: total sample count {total} exceeds the keys' limit {limit}; "
            "discard the round and regenerate keys with a larger --max-total-weight"
        )
    average = values[: update.size] / total
    return Decrypted(
        average=average,
        total_weight=total,
        clients=update.clients,
        decrypt_ms=(time.perf_counter() - start) * 1e3,
        error_bound=ctx.params.error_bound(update.clients, total),
    )


def shadow_average(flats: Sequence[np.ndarray], weights: Sequence[int]) -> np.ndarray:
    """Plaintext FedAvg of the same updates: the reference for ``he/max_abs_error`` on test runs."""
    stacked = np.stack([np.asarray(f, dtype=np.float64).ravel() for f in flats])
    return np.average(stacked, axis=0, weights=np.asarray(weights, dtype=np.float64))


def chunk_layout(size: int, slots: int) -> list[tuple[int, int]]:
    """Value ranges [lo, hi) of the packed vector (``size`` values + weight) held by each chunk.

    Each chunk holds ``slots - 1`` of them and one check slot, so the whole model takes
    ``ceil((size + 1) / (slots - 1))`` ciphertexts, none of them per-tensor.
    """
    per_chunk = slots - 1
    return [(lo, min(lo + per_chunk, size + 1)) for lo in range(0, size + 1, per_chunk)]


def _parse(message: Any) -> EncryptedUpdate:
    if isinstance(message, EncryptedUpdate):
        return message
    if isinstance(message, bytes | bytearray | memoryview):
        return EncryptedUpdate.from_bytes(bytes(message))
    kind = type(message).__name__
    raise UsageError(f"sent a plaintext update ({kind}) but HE is required")


def _mismatch(
    ctx: HEContext, update: EncryptedUpdate, size: int | None, require_max_l2: float | None
) -> str | None:
    """Why ``update`` cannot join this sum, judged from its header alone (None if it can)."""
    if update.key_id != ctx.key_id:
        return (
            f"encrypted under HE key {update.key_id[:8]}, coordinator holds {ctx.key_id[:8]} "
            "(stale or foreign key); the client must load the current secret.ctx"
        )
    if update.attested.get("finite") is not True:
        return "does not attest that its update was checked finite before encryption"
    if update.size != size:
        return f"update has {update.size} values, this round expects {size}"
    expected_chunks = len(chunk_layout(update.size, ctx.params.slots))
    if len(update.chunks) != expected_chunks:
        return f"{len(update.chunks)} ciphertexts, {expected_chunks} expected for {size} values"
    if require_max_l2 is not None:
        bound = update.attested.get("max_l2")
        if bound is None or float(bound) > require_max_l2:
            return f"attested L2 bound {bound} does not meet the required {require_max_l2}"
    return None


def _load_chunks(ctx: HEContext, update: EncryptedUpdate) -> list[ts.CKKSVector]:
    """Deserialize every chunk, checking each holds the slot count its position implies."""
    vectors = []
    layout = chunk_layout(update.size, ctx.params.slots)
    for i, (blob, (lo, hi)) in enumerate(zip(update.chunks, layout, strict=True)):
        vector = ts.ckks_vector_from(ctx.ts_context, blob)
        expected = hi - lo + 1
        if vector.size() != expected:
            raise ValueError(f"chunk {i} holds {vector.size()} values, expected {expected}")
        vectors.append(vector)
    return vectors
