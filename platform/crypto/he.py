"""CKKS secure aggregation: clients encrypt weighted updates, the coordinator sums ciphertexts.

Protocol (docs/he.md): a client flattens its (already DP-noised) update, checks it is finite and
within the bounds the parameters were sized for, multiplies it by its sample count and appends the
count as one extra value, then encrypts the vector in as few ciphertexts as the ring allows. Each
ciphertext ends with the contributor's tags (pseudo-random values keyed by the clients' secret key
and the contributor's label, see ``he_packing``) and a check slot holding 1.0; the header names
the contributor. The coordinator, holding only the public context, checks each message's key id,
checksum, shape and that no contributor is summed twice, sums the ciphertexts chunk by chunk and
returns the encrypted sum with the list of contributors. A client decrypts only an aggregate of at
least as many contributors as its floor, and checks that every chunk's check slot decrypts to the
number of contributors listed and its tags to the sum of those contributors' tags (a chunk under
a foreign key, corrupted, wrapped around the modulus, a ciphertext added twice or a plaintext
added to forge the count does not), and that the total sample count is an integer, then divides.

This module is the client's side (:func:`encrypt_update`, :func:`decrypt_average`); the
coordinator's sum is :mod:`veilfed.crypto.he_aggregate`. Parameters: ``veilfed.crypto.he_params``;
key generation and context files: ``veilfed.crypto.he_keys``; slot layout, flattening and tags:
``veilfed.crypto.he_packing``; wire format of :class:`EncryptedUpdate`:
``veilfed.crypto.he_update``.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import numpy as np
import tenseal as ts

from veilfed.crypto.he_keys import HEContext
from veilfed.crypto.he_packing import RESERVED_SLOTS, chunk_layout, contributor_tags, tag_key
from veilfed.crypto.he_params import HEParams
from veilfed.crypto.he_update import EncryptedUpdate
from veilfed.errors import CheckFailed, UsageError

# Half-width of the band around an integer the check slots and the total sample count must decrypt
# into. Honest noise there is < 1e-4 for every parameter set here; a chunk under another key,
# corrupted, or wrapped around the modulus decrypts to values spread over the whole capacity, so
# its check slot lands within the band of the known client count with probability ~0.02/capacity.
COUNT_TOLERANCE = 0.01
# Half-width of the band each decrypted tag slot must fall into around the expected tag sum (or the
# parameters' own noise bound if that is wider). Tags are uniform over [-B, B] with B >= 1, so a
# forger who does not hold the secret key hits one slot's band with probability <= 1e-3,
# and every chunk has TAG_SLOTS of them.
TAG_TOLERANCE = 1e-3


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
    contributor: str | None = None,
) -> EncryptedUpdate:
    """Check, weight and encrypt one client's flat update (client side; needs the secret context).

    ``weight`` is the client's sample count; it is encrypted too, so the coordinator never learns
    it. ``contributor`` labels the update (default: a random label); its tags are written into
    every chunk, so an aggregate can list it at most once and only with this very ciphertext.
    The checks are the client's side of robustness: the coordinator sees only ciphertexts.
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
    label = contributor if contributor is not None else secrets.token_hex(8)
    packed = np.append(values * float(weight), float(weight))
    layout = chunk_layout(values.size, params.slots)
    tags = contributor_tags(_tag_key(ctx), label, len(layout), _tag_bound(params))
    chunks = [
        ts.ckks_vector(ctx.ts_context, np.concatenate([packed[lo:hi], tags[i], [1.0]])).serialize()
        for i, (lo, hi) in enumerate(layout)
    ]
    attested = {"finite": True, "max_abs": params.max_abs_update, "max_l2": max_l2}
    return EncryptedUpdate(
        key_id=ctx.key_id,
        size=values.size,
        chunks=chunks,
        contributors=[label],
        attested=attested,
        encrypt_ms=(time.perf_counter() - start) * 1e3,
    )


def decrypt_average(
    ctx: HEContext, agg: EncryptedUpdate | bytes, min_clients: int = 1
) -> Decrypted:
    """Decrypt the encrypted sum and divide by the decrypted total sample count (client side).

    Refuses (``CheckFailed``, before decrypting) an aggregate listing fewer than ``min_clients``
    distinct contributors, so a coordinator cannot hand one client's ciphertext to another. The
    list is the coordinator's word, so after decrypting every chunk's check slot must equal its
    length and every tag slot the sum of the listed contributors' tags: a ciphertext added to
    itself, a plaintext added to the check slots, or another client's update relabelled all fail
    unless the forger holds the secret key (docs/he.md says what such a client can still do).
    """
    if not ctx.is_private:
        raise UsageError("decrypting the aggregate needs the secret HE context (secret.ctx)")
    update = agg if isinstance(agg, EncryptedUpdate) else EncryptedUpdate.from_bytes(agg)
    if update.key_id != ctx.key_id:
        raise UsageError(
            f"aggregate was encrypted under HE key {update.key_id[:8]}, this client holds "
            f"{ctx.key_id[:8]}; load the current secret.ctx"
        )
    distinct = len(set(update.contributors))
    if distinct < update.clients:
        raise CheckFailed(
            f"HE aggregate failed its integrity check: it lists {update.clients} contributors, "
            f"only {distinct} distinct; refusing to decrypt it"
        )
    if update.clients < min_clients:
        raise CheckFailed(
            f"HE aggregate of {update.clients} contributor(s) is below this client's floor of "
            f"{min_clients}; refusing to decrypt it (it would expose individual updates)"
        )
    start = time.perf_counter()
    try:
        parts = [np.asarray(v.decrypt(), dtype=np.float64) for v in load_chunks(ctx, update)]
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"aggregate ciphertext does not fit this HE context ({exc})") from None
    reserved = RESERVED_SLOTS
    checks = np.array([p[-1] for p in parts])
    tags = np.stack([p[-reserved:-1] for p in parts])
    values = np.concatenate([p[:-reserved] for p in parts])
    expected = sum(
        contributor_tags(_tag_key(ctx), c, len(parts), _tag_bound(ctx.params))
        for c in update.contributors
    )
    tag_tolerance = max(TAG_TOLERANCE, 2 * ctx.params.error_bound(update.clients, 1))
    tag_error = float(np.max(np.abs(tags - expected)))
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
    if tag_error > tag_tolerance:
        raise CheckFailed(
            f"HE aggregate of {update.clients} clients failed its integrity check: contributor "
            f"tags off by {tag_error:.3g} (a forged contributor count, an update summed twice or "
            "relabelled); discard the round"
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


def _tag_bound(params: HEParams) -> float:
    """Tags lie in [-B, B], B = max(max_abs_update, 1): a sum of k tags fits the capacity the
    keys were sized for (k contributors weigh at least k, and B·W is inside it)."""
    return max(float(params.max_abs_update), 1.0)


_TAG_KEYS: dict[tuple[str, int], bytes] = {}


def _tag_key(ctx: HEContext) -> bytes:
    """:func:`tag_key` of ``ctx``, computed once per loaded context."""
    cache = (ctx.key_id, id(ctx.ts_context))
    if cache not in _TAG_KEYS:
        _TAG_KEYS[cache] = tag_key(ctx.ts_context)
    return _TAG_KEYS[cache]


def load_chunks(ctx: HEContext, update: EncryptedUpdate) -> list[ts.CKKSVector]:
    """Deserialize every chunk, checking each holds the slot count its position implies."""
    vectors = []
    layout = chunk_layout(update.size, ctx.params.slots)
    for i, (blob, (lo, hi)) in enumerate(zip(update.chunks, layout, strict=True)):
        vector = ts.ckks_vector_from(ctx.ts_context, blob)
        expected = hi - lo + RESERVED_SLOTS
        if vector.size() != expected:
            raise ValueError(f"chunk {i} holds {vector.size()} values, expected {expected}")
        vectors.append(vector)
    return vectors
