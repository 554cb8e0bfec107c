"""How an update is laid out in CKKS slots: one flat vector, chunked, with tag and check slots.

Encrypting tensor by tensor would leave most slots of each layer's last ciphertext empty; one flat
vector wastes at most one partly filled ciphertext for the whole model. Every chunk ends with
contributor tags (keyed by the clients' secret key) and a check slot, which let a client verify
how many distinct contributors an aggregate really sums (``veilfed.crypto.he``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from veilfed.errors import UsageError


@dataclass(frozen=True)
class ArraySpec:
    """Shape and dtype of one flattened array, to restore it exactly."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def flatten(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, list[ArraySpec]]:
    """Concatenate ``arrays`` (e.g. Flower NDArrays, in state-dict order) into float64."""
    specs = [ArraySpec(tuple(a.shape), np.asarray(a).dtype.str) for a in arrays]
    if not arrays:
        return np.zeros(0, dtype=np.float64), specs
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    return flat, specs


def unflatten(flat: np.ndarray, specs: Sequence[ArraySpec]) -> list[np.ndarray]:
    """Split ``flat`` back into arrays of the recorded shapes and dtypes."""
    total = sum(s.size for s in specs)
    if flat.ndim != 1 or flat.size != total:
        raise UsageError(f"flat update has {flat.size} values but the model specs need {total}")
    out, start = [], 0
    for spec in specs:
        out.append(flat[start : start + spec.size].reshape(spec.shape).astype(spec.dtype))
        start += spec.size
    return out


# Slots at the end of every ciphertext that are not model values: ``TAG_SLOTS`` contributor tags,
# then one check slot holding 1.0 (so a sum of k ciphertexts decrypts to k there).
TAG_SLOTS = 2
RESERVED_SLOTS = TAG_SLOTS + 1


def chunk_layout(size: int, slots: int) -> list[tuple[int, int]]:
    """Value ranges [lo, hi) of the packed vector (``size`` values + weight) held by each chunk.

    Each chunk holds ``slots - RESERVED_SLOTS`` of them, then its tags and check slot, so the
    whole model takes ``ceil((size + 1) / (slots - RESERVED_SLOTS))`` ciphertexts, none of them
    per-tensor.
    """
    per_chunk = slots - RESERVED_SLOTS
    return [(lo, min(lo + per_chunk, size + 1)) for lo in range(0, size + 1, per_chunk)]


def tag_key(ts_context: object) -> bytes:
    """The clients' tag key: a hash of the CKKS secret key, which the coordinator never holds."""
    blob = ts_context.serialize(  # type: ignore[attr-defined]
        save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    return hashlib.sha256(b"veilfed-he-contributor-tag\x00" + blob).digest()


def contributor_tags(key: bytes, contributor: str, chunks: int, bound: float) -> np.ndarray:
    """The tags one contributor writes into each chunk, shape (chunks, TAG_SLOTS).

    Pseudo-random in [-bound, bound] (HMAC-SHA256 under :func:`tag_key`): without the secret key,
    the sum of the tags of a set of contributors is unpredictable, so a decrypted aggregate whose
    tag slots equal the sum over the contributors its header lists was built from those
    contributors' own ciphertexts, each counted once (see ``decrypt_average``).
    """
    out = np.empty((chunks, TAG_SLOTS))
    for c in range(chunks):
        for j in range(TAG_SLOTS):
            mac = hmac.new(key, f"{contributor}\x00{c}\x00{j}".encode(), hashlib.sha256).digest()
            unit = int.from_bytes(mac[:8], "big") / 2**64
            out[c, j] = bound * (2.0 * unit - 1.0)
    return out
