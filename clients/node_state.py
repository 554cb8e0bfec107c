"""Node-local state of one client: its lifetime accountant, its last release, its signing key.

A virtual client is a fresh ClientApp call on whatever Ray actor is free, and a real node's
ClientApp may be restarted at any time, so nothing may live in memory between rounds. The state
lives in one directory per client:

- **a real node**: ``<state>/client`` (``veilfed node start --state``). The accountant belongs to
  the node's shard and client id, not to a run: every run and round the client ever joined
  composes into it, whatever run id or round number the coordinator sends;
- **a virtual client** (simulation): ``<run_dir>/clients/<client_id>``, one accountant per run
  (the user's own data in a research run, and each run reports its own ε).

Layout of that directory::

    accountant/<client_id>.json   the cumulative accountant (``AccountantStore``), replaced
                                  atomically after every release
    accountant/<client_id>.lock   held while a round spends (two runs never race on the file)
    release/<client_id>/<sha256>.enc  each run's last released update, its loss and its report
                                  (an ``.npz``), encrypted at rest under a key derived from the
                                  client's Fernet key (``RELEASE_KEY_CONTEXT``): the loss is
                                  computed from private clips without noise. Named by the
                                  SHA-256 of the ciphertext, which the accountant records
    signing.key (+ .pub)          the Ed25519 key for privacy reports (created on first use on
                                  a real node; provisioned by the run setup in simulation)

Replays. DP noise is drawn fresh from the OS for every training, so retraining a round is a
*second* release even from the same model. A true replay — same run, same round, same global
model (``veilfed.federation.digest.model_digest`` of what the message carried) as the last
release — gets the stored update back at no new spend; anything else trains and spends again,
under the budget check; a round of the same run that is not after its last reported round is
declined (re-releasing it would be a second release under a name the audit already holds).
Ordering makes a crash safe: the release file is written first, then the accountant that both
counts the spend and names the release (by its SHA-256) in one atomic replace. A crash before
that replace means nothing left the node; one after it leaves a counted release; a release file
the accountant does not name, or one that does not decrypt under the client's key, is never
served: the caller declines, as for a missing file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from veilfed.crypto.keys import FernetKey, InvalidToken
from veilfed.errors import UsageError
from veilfed.federation.rundir import SIGNING_KEY_FILE, client_dir
from veilfed.io import write_bytes_atomic
from veilfed.privacy.accountant import ClientAccountant
from veilfed.privacy.accountant_store import AccountantStore
from veilfed.privacy.ids import check_client_id
from veilfed.privacy.signing import generate_signing_key, load_signing_key, public_key_path

_META = "__release__"  # npz entry holding the release's JSON metadata (bytes)
RELEASE_KEY_CONTEXT = "veilfed/node-release"  # derives the release key from the client's key


@dataclass(frozen=True)
class ReleaseKey:
    """What makes a round the same round: run id, round number and global model digest."""

    run_id: str
    round: int
    model: str

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "round": self.round, "model": self.model}


@dataclass(frozen=True)
class Release:
    """An update that left the node: the weights, its example count, loss and report."""

    arrays: dict[str, np.ndarray]
    num_examples: int
    loss: float
    report: str | None


class NodeState:
    """The persisted state of ``client_id`` in ``directory`` (signing key at ``key_path``,
    default ``directory/signing.key``). ``client_key`` is the client's Fernet key; releases are
    stored under a key derived from it, and without one the state cannot store or serve a
    release (accountant and signing key only)."""

    def __init__(
        self,
        directory: str | Path,
        client_id: str,
        key_path: str | Path | None = None,
        client_key: FernetKey | None = None,
    ) -> None:
        self.client_id = check_client_id(client_id)
        self.dir = Path(directory)
        self._key_path = Path(key_path) if key_path is not None else self.dir / SIGNING_KEY_FILE
        self.accountants = AccountantStore(self.dir / "accountant")
        self._release_key = None if client_key is None else client_key.derive(RELEASE_KEY_CONTEXT)

    @classmethod
    def in_run(
        cls, run_dir: str | Path, client_id: str, client_key: FernetKey | None = None
    ) -> NodeState:
        """A virtual client's state inside the simulation's run directory (per run)."""
        return cls(client_dir(run_dir, client_id), client_id, client_key=client_key)

    @classmethod
    def on_node(
        cls, state_dir: str | Path, client_id: str, client_key: FernetKey | None = None
    ) -> NodeState:
        """A real node's state (``<state>/client``): one accountant for every run it joins."""
        return cls(Path(state_dir), client_id, client_key=client_key)

    @property
    def key_path(self) -> Path:
        return self._key_path

    def release_path(self, sha256: str) -> Path:
        return self.dir / "release" / self.client_id / f"{sha256}.enc"

    @contextlib.contextmanager
    def spending(self) -> Iterator[None]:
        """Hold the client's accountant for one round: concurrent runs on one node queue here."""
        lock = self.accountants.path(self.client_id).with_suffix(".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def accountant(self, mechanism: str, run_id: str) -> ClientAccountant:
        """The client's cumulative accountant read with ``mechanism`` (fresh if never trained),
        with ``run_id``'s report chain and release selected."""
        acc = self.accountants.load(self.client_id, mechanism, recompose=True)
        acc.select_run(run_id)
        return acc

    def released(self, acc: ClientAccountant, key: ReleaseKey) -> Release | None:
        """The stored update when ``key`` is exactly the last release ``acc`` counted, else None."""
        named = acc.release
        if named is None or {k: named.get(k) for k in ("run_id", "round", "model")} != (
            key.as_dict()
        ):
            return None
        if self._release_key is None:
            return None
        try:
            token = self.release_path(str(named["sha256"])).read_bytes()
        except OSError:
            return None  # counted but lost: the caller declines, never releases at no cost
        if hashlib.sha256(token).hexdigest() != named["sha256"]:
            return None
        try:
            blob = self._release_key.decrypt(token)
        except InvalidToken:
            return None  # not sealed under this client's key: lost, like a missing file
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            meta = json.loads(bytes(data[_META]).decode("utf-8"))
            arrays = {name: data[name].copy() for name in meta["arrays"]}
        loss = meta["loss"]
        return Release(
            arrays,
            int(meta["num_examples"]),
            math.nan if loss is None else float(loss),
            meta["report"],
        )

    def commit(self, acc: ClientAccountant, key: ReleaseKey, release: Release) -> None:
        """Persist the release (encrypted), then the accountant that counts it; before it leaves
        the node."""
        if self._release_key is None:
            raise UsageError(
                f"client {self.client_id}: no client key to encrypt its release at rest with"
            )
        names = sorted(release.arrays)
        if _META in names:
            raise UsageError(f"client {self.client_id}: a tensor may not be named {_META!r}")
        meta = {
            "arrays": names,
            "num_examples": release.num_examples,
            "loss": release.loss if math.isfinite(release.loss) else None,
            "report": release.report,
            **key.as_dict(),
        }
        buf = io.BytesIO()
        np.savez(
            buf,
            **{n: release.arrays[n] for n in names},
            **{_META: np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)},
        )
        token = self._release_key.encrypt(buf.getvalue())
        sha = hashlib.sha256(token).hexdigest()
        write_bytes_atomic(self.release_path(sha), token, mode=0o600)
        previous = acc.release
        acc.release = {**key.as_dict(), "sha256": sha}
        self.accountants.save(acc)
        if previous is not None and previous.get("sha256") != sha:
            with contextlib.suppress(OSError):  # superseded: no replay can ask for it any more
                self.release_path(str(previous["sha256"])).unlink()

    def signing_key(self):  # type: ignore[no-untyped-def]
        return load_signing_key(self.key_path)

    def public_key_pem(self) -> bytes:
        """The public half of the signing key, created on first use (a real node's first run)."""
        if not self.key_path.exists():
            generate_signing_key(self.key_path)
        return public_key_path(self.key_path).read_bytes()
