"""Client side of HE secure aggregation: rebuild the global model, encrypt the new weights.

With HE on, the coordinator never holds a plaintext global model after round 1. It keeps only
the latest encrypted aggregate Enc(Σ n_k w_k, Σ n_k) of the clients' *full* new weights, and
sends it in every train and evaluate message (round 1: the seeded initial weights, which are
public). Any client, including one that was never sampled before, decrypts it and divides by the
decrypted total weight: that is exactly the FedAvg global model, identical on every client
(decryption is deterministic). No per-round history is needed, so a stateless Ray actor can
serve any client in any round.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from veilfed.coordinator.settings import SimSettings
from veilfed.crypto.he import (
    ArraySpec,
    Decrypted,
    EncryptedUpdate,
    HEContext,
    decrypt_average,
    encrypt_update,
    flatten,
    load_context,
    unflatten,
)
from veilfed.errors import UsageError

GLOBAL_KEY = "he-global"  # config entry (bytes): the encrypted aggregate of the last round
UPDATE_RECORD = "he"  # reply ConfigRecord: "update" (bytes) or "withheld" (reason)
SHADOW_RECORD = "shadow"  # evaluate message ArrayRecord (test runs): plaintext FedAvg, flat
SHADOW_WEIGHT = "he/shadow-weight"  # reply metric (test runs): the client's sample count


@functools.lru_cache(maxsize=4)
def _secret(path: str) -> HEContext:
    return load_context(path, require_secret=True)


def secret_context(path: str) -> HEContext:
    """The clients' secret context; cached per process (loading costs ~10 ms)."""
    if not path:
        raise UsageError(
            "this run uses HE secure aggregation but the node has no HE context; start it with "
            "`veilfed node start ... --he-context secret.ctx` (from `veilfed he keygen`)"
        )
    return _secret(path)


@functools.lru_cache(maxsize=4)
def _layout(settings_json: str) -> tuple[tuple[str, ...], tuple[ArraySpec, ...]]:
    from veilfed.clients.trainer import initial_arrays

    arrays = initial_arrays(SimSettings.from_json(settings_json))
    _, specs = flatten(list(arrays.values()))
    return tuple(arrays), tuple(specs)


def layout(settings: SimSettings) -> tuple[tuple[str, ...], tuple[ArraySpec, ...]]:
    """Tensor names (state-dict order) and specs of the model every flat vector follows."""
    return _layout(settings.to_json())


def to_flat(settings: SimSettings, arrays: dict[str, np.ndarray]) -> np.ndarray:
    names, _ = layout(settings)
    return flatten([arrays[k] for k in names])[0]


def global_model(
    settings: SimSettings, secret_path: str, message: Any
) -> tuple[dict[str, np.ndarray], Decrypted | None]:
    """The global model a train/evaluate message stands for, and the decryption (None: round 1).

    A plaintext model is only ever accepted before the first aggregate (the seeded initial
    weights); afterwards the message must carry the encrypted aggregate.
    """
    blob = message.content["config"].get(GLOBAL_KEY)
    if blob is None:
        return {k: a.numpy() for k, a in message.content["arrays"].items()}, None
    result = decrypt_average(secret_context(secret_path), bytes(blob))
    names, specs = layout(settings)
    return dict(zip(names, unflatten(result.average, specs), strict=True)), result


def encrypt_weights(
    settings: SimSettings,
    secret_path: str,
    new: dict[str, np.ndarray],
    start: dict[str, np.ndarray],
    weight: int,
) -> EncryptedUpdate:
    """Enc(n_k · w_k, n_k) after the client's own checks (finite, bounds, norm of w_k − start).

    Raises ``CheckFailed`` when a check fails; the caller withholds the update.
    """
    bound = settings.federated.norm_bound
    return encrypt_update(
        secret_context(secret_path),
        to_flat(settings, new),
        weight,
        max_l2=bound if bound > 0 else None,
        reference=to_flat(settings, start),
    )
