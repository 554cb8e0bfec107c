"""One digest of "the global model of this round", computed the same way on both sides.

A privacy report and the coordinator's signed round log name the model a round started from by
``model_digest``. A node uses it to tell a replayed round (same round, same model: no new spend)
from a new release (anything else: spends again); the audit uses it to tie each report to the
round the coordinator logged.

Contract: the digest is over what the coordinator *sent*, so either side can compute it without
the other's secrets. Plaintext model: SHA-256 over the tensors in name order, each as
``name``, dtype string, shape and raw little-endian bytes, length-prefixed. Under HE, after the
first aggregate, the model travels as the encrypted aggregate: the digest is SHA-256 over those
ciphertext bytes (the coordinator cannot decrypt; every key holder decrypts the same bytes).
The two forms are domain-separated, so a ciphertext can never collide with a tensor dict.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping

import numpy as np

_ARRAYS = b"veilfed/model-digest/arrays/v1"
_CIPHERTEXT = b"veilfed/model-digest/ciphertext/v1"


def _chunk(h: hashlib._Hash, data: bytes) -> None:
    h.update(struct.pack("<Q", len(data)))
    h.update(data)


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """Hex SHA-256 of a plaintext model (a name → array mapping), independent of dict order."""
    h = hashlib.sha256(_ARRAYS)
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        le = a.astype(a.dtype.newbyteorder("<"), copy=False)
        _chunk(h, name.encode())
        _chunk(h, le.dtype.str.encode())
        _chunk(h, struct.pack(f"<{a.ndim}Q", *a.shape))
        _chunk(h, le.tobytes())
    return h.hexdigest()


def ciphertext_digest(blob: bytes) -> str:
    """Hex SHA-256 of an encrypted global model (the serialized aggregate, as sent)."""
    h = hashlib.sha256(_CIPHERTEXT)
    _chunk(h, bytes(blob))
    return h.hexdigest()


def model_digest(arrays: Mapping[str, np.ndarray] | None, blob: bytes | None) -> str:
    """The round's model digest: of the ciphertext when one was sent, else of the arrays."""
    if blob is not None:
        return ciphertext_digest(blob)
    if arrays is None:
        raise ValueError("model_digest needs the arrays or the encrypted aggregate")
    return arrays_digest(arrays)
