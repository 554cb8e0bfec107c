"""The client side of update compression: encode a release and keep its error feedback.

With ``[federated] update_compression`` set, a trained reply carries
``veilfed.federation.update_codec.encode`` of the release instead of whole weights. ``topk`` and
``randk`` carry what they left out into the next round (error feedback). A client is a fresh
ClientApp call every round, so that residual lives in the client's state directory::

    residual/<sha256(run_id)>.enc   Fernet (key derived from the client's key,
                            RESIDUAL_KEY_CONTEXT) of an .npz: ``round``, ``before`` (the residual
                            that round started from) and ``after`` (what it leaves for the next
                            round). Named by a hash: the run id is the coordinator's to choose.

A replayed round (the same release served again) starts from ``before``, so ``topk`` and
``randk`` send the same payload again; a later round starts from ``after``; an earlier round than
the stored one starts from zero and leaves the stored state as it is. A residual that is missing,
sealed under another key or shaped for another model is dropped: error feedback restarts from
zero, which costs accuracy, never privacy (the residual is post-processing of released updates).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from veilfed.compress.registry import Payload, UpdateCompressor
from veilfed.crypto.keys import FernetKey, InvalidToken
from veilfed.federation import update_codec
from veilfed.io import write_bytes_atomic

RESIDUAL_KEY_CONTEXT = "veilfed/node-residual"


class ResidualStore:
    """One client's error-feedback residuals, one sealed file per run."""

    def __init__(self, directory: str | Path, client_key: FernetKey) -> None:
        self.dir = Path(directory) / "residual"
        self._key = client_key.derive(RESIDUAL_KEY_CONTEXT)

    def _path(self, run_id: str) -> Path:
        return self.dir / f"{hashlib.sha256(run_id.encode()).hexdigest()}.enc"

    def _read(self, run_id: str) -> tuple[int, np.ndarray, np.ndarray] | None:
        try:
            blob = self._key.decrypt(self._path(run_id).read_bytes())
            with np.load(io.BytesIO(blob), allow_pickle=False) as data:
                return int(data["round"]), data["before"], data["after"]
        except (OSError, InvalidToken, KeyError, ValueError):
            return None

    def load(self, run_id: str, rnd: int) -> np.ndarray | None:
        """The residual round ``rnd`` starts from (None: start from zero)."""
        stored = self._read(run_id)
        if stored is None:
            return None
        last, before, after = stored
        if last == rnd:
            return before if before.size else None
        return after if last < rnd else None

    def save(self, run_id: str, rnd: int, before: np.ndarray | None, after: np.ndarray) -> None:
        """Keep round ``rnd``'s residuals, unless a later round's are stored already."""
        stored = self._read(run_id)
        if stored is not None and stored[0] > rnd:
            return
        buf = io.BytesIO()
        empty = np.zeros(0, np.float32)
        np.savez(buf, round=np.int64(rnd), before=before if before is not None else empty,
                 after=after)  # fmt: skip
        write_bytes_atomic(self._path(run_id), self._key.encrypt(buf.getvalue()), mode=0o600)


def encode_release(
    codec: UpdateCompressor,
    residuals: ResidualStore,
    run_id: str,
    rnd: int,
    start: Mapping[str, np.ndarray],
    trained: Mapping[str, np.ndarray],
) -> Payload:
    """The payload of one release, with the run's error feedback restored and saved."""
    before = None
    if hasattr(codec, "residual"):
        before = residuals.load(run_id, rnd)
        size = sum(np.asarray(start[k]).size for k in update_codec.float_keys(start))
        if before is not None and before.shape != (size,):
            before = None  # shaped for another model: restart error feedback
        codec.residual = before
    payload = update_codec.encode(codec, start, trained)
    after = getattr(codec, "residual", None)
    if after is not None:
        with contextlib.suppress(OSError):  # lost feedback costs accuracy, not the round
            residuals.save(run_id, rnd, before, after)
    return payload
