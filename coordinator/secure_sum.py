"""HE secure aggregation on the coordinator: sum ciphertexts, never decrypt.

The coordinator holds only the public CKKS context (it can sum, not decrypt or encrypt), the
latest encrypted aggregate (the global model: ``None`` until round 1 aggregated, while the
seeded initial weights, which are public, go out in plaintext), the previous one until this
round's is evaluated, and on test runs (``[he] shadow``) the plaintext FedAvg of the clients'
shadow copies for ``he/max_abs_error``. The norm bound is enforced by the clients and required
here through their attestation inside each ciphertext's header.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from flwr.app import Message

from veilfed.coordinator.round_record import RoundLog
from veilfed.crypto import he_aggregate, he_keys
from veilfed.errors import UsageError
from veilfed.federation.keys import (
    ARRAYS_RECORD,
    HE_KEY_ID,
    SHADOW_WEIGHT,
    UPDATE_BYTES,
    UPDATE_RECORD,
    WITHHELD,
)
from veilfed.federation.settings import RunSettings
from veilfed.federation.weights import to_flat

log = logging.getLogger("veilfed.coordinator")


def payload_problem(reply: Message) -> str | None:
    """Why an HE reply carries no ciphertext to sum (None: it does; ``aggregate`` parses it)."""
    rec = reply.content.config_records.get(UPDATE_RECORD)
    if rec is not None and WITHHELD in rec:
        return f"client withheld its update: {rec[WITHHELD]}"
    if rec is not None and isinstance(rec.get(UPDATE_BYTES), bytes):
        return None
    if reply.content.array_records:
        return "sent a plaintext update but HE is required"
    return "no encrypted update in the reply"


class SecureSum:
    """The encrypted global model of one run and the sums that produce it."""

    def __init__(self, settings: RunSettings, aggregate: bytes | None) -> None:
        self.s = settings
        self.ctx = he_keys.load_context(settings.he.public_path, require_secret=False)
        self.aggregate = aggregate  # the global model, encrypted
        self.previous: bytes | None = None  # this round's predecessor, until it is evaluated
        self.shadow: np.ndarray | None = None

    def check_client(self, cid: str, info: dict[str, Any]) -> None:
        """At admission: the client encrypts with the keys of this coordinator's context."""
        theirs = info.get(HE_KEY_ID)
        if theirs != self.ctx.key_id:
            raise UsageError(
                f"client {cid}: "
                + (f"encrypts with HE keys {theirs}" if theirs else "has no HE context")
                + f", this coordinator's public context is {self.ctx.key_id}; start the "
                "node with --he-context set to the secret.ctx of the same `veilfed he keygen`"
            )

    def check_total_weight(self, total: int) -> None:
        """At admission: a round summing every client's examples fits the keys."""
        if total > self.ctx.params.max_total_weight:
            raise UsageError(
                f"HE keys sum at most {self.ctx.params.max_total_weight} examples a round, the "
                f"clients hold {total}; regenerate them with a larger --max-total-weight"
            )

    def sum(
        self,
        rnd: int,
        accepted: list[Message],
        cid_of: dict[int, str],
        size: int,
        rlog: RoundLog,
    ) -> bool:
        """Sum the accepted ciphertexts of ``size`` values; unsummable ones are rejected in
        ``rlog``. True when a new encrypted global model was released."""
        blobs = {
            cid_of[r.metadata.src_node_id]: r.content[UPDATE_RECORD][UPDATE_BYTES] for r in accepted
        }
        fed = self.s.federated
        bound = fed.norm_bound if fed.norm_bound > 0 else None
        agg, rejections = he_aggregate.aggregate(
            self.ctx, blobs, expected_size=size, require_max_l2=bound
        )
        for rej in rejections:
            rlog.rejected[rej.client] = rej.reason
            rlog.accepted.remove(rej.client)
            log.warning("round %d: rejected update of client %s: %s", rnd, rej.client, rej.reason)
        # Clients refuse to decrypt an aggregate of fewer than [he] min_contributors clients.
        needed = max(fed.min_fit_clients, self.s.he.min_contributors)
        if agg is None or len(rlog.accepted) < needed:
            log.warning(
                "round %d: %d accepted updates < %d (min_fit_clients, [he] min_contributors); "
                "global model unchanged",
                rnd,
                len(rlog.accepted),
                needed,
            )
            return False
        wire = [len(bytes(blobs[c])) for c in rlog.accepted]
        self.previous = self.aggregate
        self.aggregate = agg.to_bytes()
        rlog.he = {
            "he/encrypt_ms": agg.encrypt_ms,
            "he/aggregate_ms": agg.aggregate_ms,
            "he/bytes_ratio": float(np.mean(wire)) / (4 * size),
            "he/ciphertext_bytes": float(np.mean(wire)),
            "he/plaintext_bytes": float(4 * size),
            "he/aggregate_bytes": float(len(self.aggregate)),
        }
        self.shadow = None
        if self.s.he.shadow:
            kept = [r for r in accepted if cid_of[r.metadata.src_node_id] in rlog.accepted]
            self.shadow = self._shadow_average(rnd, kept)
        return True

    def _shadow_average(self, rnd: int, kept: list[Message]) -> np.ndarray | None:
        try:
            flats = [
                to_flat(self.s, {k: a.numpy() for k, a in r.content[ARRAYS_RECORD].items()})
                for r in kept
            ]
            weights = [
                int(next(iter(r.content.metric_records.values()))[SHADOW_WEIGHT]) for r in kept
            ]
        except (KeyError, ValueError) as exc:  # a shadow copy is missing: no error metric
            log.warning("round %d: no HE shadow aggregate (%s)", rnd, exc)
            return None
        return he_aggregate.shadow_average(flats, weights)

    def discard(self, rnd: int, rlog: RoundLog) -> None:
        """Every evaluating client refused this round's aggregate (its decryption failed the
        integrity check: an update under a forged key id or tampered beyond the header checks
        was summed; or it sums fewer contributors than the clients' floor). It cannot be
        attributed to a client, so the round is discarded and the previous global model kept,
        instead of every later round failing on it."""
        log.warning(
            "round %d: clients refused the encrypted aggregate (integrity check or contributor "
            "floor); discarding the round and keeping the previous global model",
            rnd,
        )
        self.aggregate = self.previous
        self.shadow = None
        rlog.aggregated = False
        rlog.he["he/discarded"] = 1.0
