"""CKKS secure aggregation, the coordinator's side: sum encrypted updates holding no secret key.

:func:`aggregate` takes the public context and one message per client. It judges each from its
header alone (key id, the attested finiteness and L2 bound, size, chunk count) and from its
contributors (none summed twice), deserializes every chunk against the slot count its position
implies, and sums the rest chunk by chunk. Whatever cannot be summed safely is left out with a
:class:`Rejection` and a logged reason; what it says about the result (contributors, attested
bounds) is the coordinator's word, which the client checks on decryption
(:func:`veilfed.crypto.he.decrypt_average`). :func:`shadow_average` is the plaintext reference.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal as ts

from veilfed.crypto.he import load_chunks
from veilfed.crypto.he_keys import HEContext
from veilfed.crypto.he_packing import chunk_layout
from veilfed.crypto.he_update import EncryptedUpdate
from veilfed.errors import UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rejection:
    client: str
    reason: str


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
    seen: set[str] = set()
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
        twice = seen.intersection(update.contributors)
        if not reason and (twice or len(set(update.contributors)) < update.clients):
            reason = f"contributor {sorted(twice or update.contributors)[0]} would be summed twice"
        if reason:
            reject(client, reason)
            continue
        try:
            vectors = load_chunks(ctx, update)
            acc = vectors if acc is None else [a + v for a, v in zip(acc, vectors, strict=True)]
        except (ValueError, RuntimeError, TypeError) as exc:
            reject(client, f"ciphertext does not fit this context ({exc})")
            continue
        accepted.append(update)
        seen.update(update.contributors)

    if acc is None:
        return None, rejections
    l2_bounds = [u.attested.get("max_l2") for u in accepted]
    total = EncryptedUpdate(
        key_id=ctx.key_id,
        size=accepted[0].size,
        chunks=[v.serialize() for v in acc],
        contributors=[c for u in accepted for c in u.contributors],
        attested={
            "finite": True,
            "max_abs": max(float(u.attested.get("max_abs", math.inf)) for u in accepted),
            "max_l2": None if None in l2_bounds else max(l2_bounds),
        },
        encrypt_ms=float(np.mean([u.encrypt_ms for u in accepted])),
    )
    total.aggregate_ms = (time.perf_counter() - start) * 1e3
    return total, rejections


def shadow_average(flats: Sequence[np.ndarray], weights: Sequence[int]) -> np.ndarray:
    """Plaintext FedAvg of the same updates: the reference for ``he/max_abs_error`` on test runs."""
    stacked = np.stack([np.asarray(f, dtype=np.float64).ravel() for f in flats])
    return np.average(stacked, axis=0, weights=np.asarray(weights, dtype=np.float64))


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
