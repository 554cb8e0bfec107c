"""Client side of HE secure aggregation: rebuild the global model, encrypt the new weights.

With HE on, the coordinator never holds a plaintext global model after round 1. It keeps only
the latest encrypted aggregate Enc(Σ n_k w_k, Σ n_k) of the clients' *full* new weights, and
sends it in every train and evaluate message (round 1: the seeded initial weights, which are
public). Any client, including one that was never sampled before, decrypts it and divides by the
decrypted total weight: that is exactly the FedAvg global model, identical on every client
(decryption is deterministic). No per-round history is needed, so a stateless Ray actor can
serve any client in any round.

Each update is labelled ``<run id>/<round>/<client id>``. A client decrypts an aggregate only if
it sums at least its floor of contributors (``he-min-contributors`` on a real node, ``[he]
min_contributors`` in a simulation), all distinct clients of one past round of this run (an
aggregate of another run under the same keys is a replayed, stale model): the labels are
the coordinator's word, but the contributor tags inside the ciphertexts must match them
(``veilfed.crypto.he.decrypt_average``), so a coordinator cannot pass off one client's update,
alone or added to itself, as an aggregate.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from flwr.common import MessageType

from veilfed.crypto.he import Decrypted, decrypt_average, encrypt_update
from veilfed.crypto.he_keys import HEContext, load_context
from veilfed.crypto.he_packing import unflatten
from veilfed.crypto.he_update import EncryptedUpdate
from veilfed.errors import CheckFailed, UsageError
from veilfed.federation.keys import ARRAYS_RECORD, CONFIG_RECORD, GLOBAL_KEY, ROUND_KEY
from veilfed.federation.settings import RunSettings
from veilfed.federation.weights import layout, to_flat


@functools.lru_cache(maxsize=4)
def _secret(path: str) -> HEContext:
    ctx = load_context(path, require_secret=True)
    ctx.params.check_aggregation_only(path)
    return ctx


def secret_context(path: str) -> HEContext:
    """The clients' secret context; cached per process (loading costs ~10 ms).

    A context with any multiplicative depth is refused (``HEParams.check_aggregation_only``):
    the contributor floor rests on the coordinator being unable to multiply ciphertexts.
    """
    if not path:
        raise UsageError(
            "this run uses HE secure aggregation but the node has no HE context; start it with "
            "`veilfed node start ... --he-context secret.ctx` (from `veilfed he keygen`)"
        )
    return _secret(path)


def contributor_label(run_id: str, rnd: int, client_id: str) -> str:
    return f"{run_id}/{rnd}/{client_id}"


def check_contributors(
    labels: list[str], run_id: str | None = None, before: int | None = None
) -> None:
    """An aggregate sums distinct clients of one round of one run; ``CheckFailed`` otherwise.

    With ``run_id`` the run must be this one (an aggregate replayed from another run under the
    same keys is a stale model); with ``before`` its round must be earlier than that round.
    """
    parts = [label.split("/") for label in labels]
    if any(len(p) != 3 for p in parts):
        raise CheckFailed("HE aggregate lists a contributor that is not <run>/<round>/<client>")
    rounds = {(p[0], p[1]) for p in parts}
    if len(rounds) > 1:
        raise CheckFailed(f"HE aggregate mixes updates of {len(rounds)} rounds; refusing it")
    clients = [p[2] for p in parts]
    if len(set(clients)) < len(clients):
        raise CheckFailed("HE aggregate counts one client more than once; refusing it")
    if not rounds:
        return
    ((run, rnd),) = rounds
    if run_id is not None and run != run_id:
        raise CheckFailed(
            f"HE aggregate is of run {run}, not this run {run_id} (a replayed model); refusing it"
        )
    if before is not None and not (rnd.isdigit() and 1 <= int(rnd) < before):
        raise CheckFailed(
            f"HE aggregate is labelled round {rnd}, not a round before {before}; refusing it"
        )


def global_model(
    settings: RunSettings, secret_path: str, message: Any, min_contributors: int = 1
) -> tuple[dict[str, np.ndarray], Decrypted | None]:
    """The global model a train/evaluate message stands for, and the decryption (None: round 1).

    A plaintext model is only ever accepted before the first aggregate (the seeded initial
    weights); afterwards the message must carry the encrypted aggregate, of at least
    ``min_contributors`` distinct clients. Raises ``CheckFailed`` when the client refuses it.
    """
    blob = message.content[CONFIG_RECORD].get(GLOBAL_KEY)
    if blob is None:
        return {k: a.numpy() for k, a in message.content[ARRAYS_RECORD].items()}, None
    # A train message of round r carries the aggregate of an earlier round; an evaluate message
    # may carry the one round r itself just produced.
    rnd = int(message.content[CONFIG_RECORD].get(ROUND_KEY, 0))
    before = rnd if message.metadata.message_type == MessageType.TRAIN else rnd + 1
    return decrypt_global(settings, secret_path, bytes(blob), before, min_contributors)


def decrypt_global(
    settings: RunSettings,
    secret_path: str,
    blob: bytes,
    before: int | None = None,
    min_contributors: int = 1,
) -> tuple[dict[str, np.ndarray], Decrypted]:
    """The global model an encrypted aggregate of this run stands for (of a round before
    ``before``, when given), as every client decrypts it; ``CheckFailed`` when refused."""
    update = EncryptedUpdate.from_bytes(blob)
    check_contributors(update.contributors, settings.run_id, before)
    result = decrypt_average(secret_context(secret_path), update, min_clients=min_contributors)
    names, specs = layout(settings)
    return dict(zip(names, unflatten(result.average, specs), strict=True)), result


def encrypt_weights(
    settings: RunSettings,
    secret_path: str,
    new: dict[str, np.ndarray],
    start: dict[str, np.ndarray],
    weight: int,
    contributor: str,
) -> EncryptedUpdate:
    """Enc(n_k · w_k, n_k) after the client's own checks (finite, bounds, norm of w_k − start),
    labelled ``contributor`` (:func:`contributor_label`).

    Raises ``CheckFailed`` when a check fails; the caller withholds the update.
    """
    bound = settings.federated.norm_bound
    return encrypt_update(
        secret_context(secret_path),
        to_flat(settings, new),
        weight,
        max_l2=bound if bound > 0 else None,
        reference=to_flat(settings, start),
        contributor=contributor,
    )
