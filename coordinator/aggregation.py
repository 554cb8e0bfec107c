"""Screening client updates before any aggregation rule sees them.

Every strategy (FedAvg, FedProx, FedOpt, median, trimmed mean, and the DP wrappers around them)
gets only updates that passed these checks, so one malformed or malicious reply cannot poison
the global model or crash the round: it is rejected, logged with its reason, and the round goes
on with the rest. A compressed update is decoded here first, against the global model it was
trained from, so the checks and the strategies see whole weights either way. Checks are on
plaintext arrays; with HE the coordinator only sees ciphertexts and these checks move to the
clients (attested in their signed reports, see docs/federated.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from veilfed.compress.registry import UpdateCompressor
from veilfed.errors import VeilfedError
from veilfed.federation import update_codec
from veilfed.federation.keys import ARRAYS_RECORD


@dataclass(frozen=True)
class Verdict:
    """Outcome of screening one update: ``reason`` is None when accepted; ``wire_bytes`` the
    bytes its arrays took on the wire (0 when it had none)."""

    reason: str | None
    update_norm: float
    wire_bytes: int = 0


def screen_reply(
    reply: Message,
    reference: Mapping[str, np.ndarray],
    codec: UpdateCompressor | None,
    norm_bound: float | None,
) -> Verdict:
    """Screen a plaintext train reply: its one ArrayRecord, under its documented name (the
    strategy reads that one, and Flower refuses replies whose records differ), decoded by
    ``codec`` when the run compresses updates (``veilfed.federation.update_codec``; the decoded
    whole weights replace the payload in the reply, for the strategy), then
    :func:`screen_update`."""
    records = reply.content.array_records
    arrays = records.get(ARRAYS_RECORD) if len(records) == 1 else None
    sent = sum(len(a.data) for a in arrays.values()) if arrays is not None else 0  # as sent
    if codec is not None and arrays is not None:
        try:
            payload = {k: a.numpy() for k, a in arrays.items()}
            weights = update_codec.decode(codec, payload, reference)
        except Exception as exc:  # any undecodable payload is the sender's problem
            reason = str(exc) if isinstance(exc, VeilfedError) else f"undecodable update ({exc})"
            return Verdict(reason, math.nan, sent)
        arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in weights.items()})
        reply.content[ARRAYS_RECORD] = arrays
    verdict = screen_update(arrays, reference, norm_bound)
    return Verdict(verdict.reason, verdict.update_norm, sent)


def update_norm(update: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """L2 norm of ``update - reference`` over all floating-point tensors."""
    total = 0.0
    for key, ref in reference.items():
        if not np.issubdtype(ref.dtype, np.floating):
            continue
        diff = update[key].astype(np.float64) - ref.astype(np.float64)
        total += float(np.dot(diff.ravel(), diff.ravel()))
    return math.sqrt(total)


def screen_update(
    arrays: ArrayRecord | None,
    reference: Mapping[str, np.ndarray],
    norm_bound: float | None,
) -> Verdict:
    """Accept an update only if it matches the global model's keys/shapes/dtypes, is finite and
    (with ``norm_bound``) moved the model by at most ``norm_bound`` in L2."""
    if arrays is None:
        return Verdict("no model arrays in the reply", math.nan)
    try:
        update = {k: a.numpy() for k, a in arrays.items()}
    except Exception as exc:  # a payload that does not deserialize is as bad as a wrong shape
        return Verdict(f"undecodable arrays ({type(exc).__name__})", math.nan)
    missing = sorted(set(reference) - set(update))
    extra = sorted(set(update) - set(reference))
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        return Verdict(f"wrong tensors ({what})", math.nan)
    for key, ref in reference.items():
        got = update[key]
        if got.shape != ref.shape:
            return Verdict(f"wrong shape for {key!r}: {got.shape} != {ref.shape}", math.nan)
        if got.dtype != ref.dtype:
            return Verdict(f"wrong dtype for {key!r}: {got.dtype} != {ref.dtype}", math.nan)
        if np.issubdtype(got.dtype, np.floating) and not np.isfinite(got).all():
            return Verdict(f"non-finite values (NaN/Inf) in {key!r}", math.nan)
    norm = update_norm(update, reference)
    if norm_bound is not None and norm > norm_bound:
        return Verdict(f"update norm {norm:.4g} exceeds bound {norm_bound:g}", norm)
    return Verdict(None, norm)
