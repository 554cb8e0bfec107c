"""Node-local state of one client: its accountant history and report signing key.

A virtual client is a fresh ClientApp call on whatever Ray actor is free, and a real node's
ClientApp may be restarted at any time, so nothing may live in memory between rounds. In
simulation everything lives in ``<run_dir>/clients/<client_id>/``; on a real node in its own
``--state`` directory (``<state>/client``), the accountant once per run (a node serves many runs,
each with its own round numbers) and the signing key once per node:

``accountant/r<round>.json``  the accountant's state after each round the client trained
                                (real node: ``runs/<run id>/accountant/``);
``signing.key`` (+ ``.pub``)   its Ed25519 key for privacy reports. In simulation the run setup
                                creates and registers it (``provision``); a real node creates it
                                on first use and offers the public half when the coordinator asks
                                which client it is; the coordinator pins it for the run.

Keeping one accountant snapshot per round (instead of overwriting one file) makes a re-run of an
unfinished round idempotent: the client starts from its state *before* that round. Because the
round's training is a pure function of (seed, client, round, global model), the re-run releases
the very same update as the killed attempt, so it is no new privacy loss and must not be counted
twice — which is exactly what the per-round snapshots give (resume-equality test).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from veilfed.errors import UsageError
from veilfed.io import write_text_atomic
from veilfed.privacy.accounting import ClientAccountant, check_client_id
from veilfed.privacy.reports import (
    KeyRegistry,
    generate_signing_key,
    load_signing_key,
    public_key_path,
)

_SNAPSHOT = re.compile(r"^r(\d{6})\.json$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def check_run_id(run_id: str) -> str:
    """Run ids from the coordinator's messages become a directory name on the node."""
    if not _RUN_ID.match(run_id):
        raise UsageError(f"run id {run_id!r}: not a run id (letters, digits, '_', '-')")
    return run_id


class NodeState:
    """The persisted state of ``client_id``: accountant in ``directory``, signing key at
    ``key_path`` (default ``directory/signing.key``)."""

    def __init__(
        self, directory: str | Path, client_id: str, key_path: str | Path | None = None
    ) -> None:
        self.client_id = check_client_id(client_id)
        self.dir = Path(directory)
        self._key_path = Path(key_path) if key_path is not None else self.dir / "signing.key"

    @classmethod
    def in_run(cls, run_dir: str | Path, client_id: str) -> NodeState:
        """A virtual client's state inside the simulation's run directory."""
        return cls(Path(run_dir) / "clients" / client_id, client_id)

    @classmethod
    def on_node(cls, state_dir: str | Path, run_id: str, client_id: str) -> NodeState:
        """A real node's state for one run: its accountant per run, its signing key per node."""
        state = Path(state_dir)
        return cls(state / "runs" / check_run_id(run_id), client_id, state / "signing.key")

    @property
    def key_path(self) -> Path:
        return self._key_path

    def _snapshots(self) -> dict[int, Path]:
        acc_dir = self.dir / "accountant"
        if not acc_dir.is_dir():
            return {}
        found = {}
        for path in acc_dir.iterdir():
            m = _SNAPSHOT.match(path.name)
            if m:
                found[int(m.group(1))] = path
        return found

    def accountant_before(self, rnd: int, mechanism: str) -> ClientAccountant:
        """The accountant as it was when round ``rnd`` started (fresh if never trained)."""
        earlier = [r for r in self._snapshots() if r < rnd]
        if not earlier:
            return ClientAccountant(self.client_id, mechanism)
        path = self._snapshots()[max(earlier)]
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(
                f"{path}: cannot read accountant state ({exc}); deleting it would reset this "
                "client's privacy spend"
            ) from None
        acc = ClientAccountant(self.client_id, mechanism)
        try:
            acc.load_state_dict(state)
        except UsageError as exc:
            raise UsageError(f"{path}: {exc}") from None
        return acc

    def save_accountant(self, rnd: int, acc: ClientAccountant) -> Path:
        path = self.dir / "accountant" / f"r{rnd:06d}.json"
        write_text_atomic(path, json.dumps(acc.state_dict(), sort_keys=True, indent=1) + "\n")
        return path

    def signing_key(self):  # type: ignore[no-untyped-def]
        return load_signing_key(self.key_path)

    def public_key_pem(self) -> bytes:
        """The public half of the signing key, created on first use (a real node's first run)."""
        if not self.key_path.exists():
            generate_signing_key(self.key_path)
        return public_key_path(self.key_path).read_bytes()


def provision(run_dir: str | Path, client_ids: list[str]) -> KeyRegistry:
    """Give every client a signing key and register the public halves with the coordinator.

    On a real node the node creates its own key and the coordinator pins the public half it
    offers at discovery (``Coordinator._admit``); in simulation the run setup plays both parts.
    """
    registry = KeyRegistry(Path(run_dir) / "keys")
    for cid in client_ids:
        node = NodeState.in_run(run_dir, cid)
        if not node.key_path.exists():
            generate_signing_key(node.key_path)
        registry.register(cid, public_key_path(node.key_path))
    return registry
