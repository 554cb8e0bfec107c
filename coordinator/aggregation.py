"""Screening client updates before any aggregation rule sees them.

Every strategy (FedAvg, FedProx, FedOpt, median, trimmed mean, and the DP wrappers around them)
gets only updates that passed these checks, so one malformed or malicious reply cannot poison
the global model or crash the round: it is rejected, logged with its reason, and the round goes
on with the rest. Checks are on plaintext arrays; with HE the coordinator only sees ciphertexts
and these checks move to the clients (attested in their signed reports, see docs/federated.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord


@dataclass(frozen=True)
class Verdict:
    """Outcome of screening one update: ``reason`` is None when accepted."""

    reason: str | None
    update_norm: float


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
