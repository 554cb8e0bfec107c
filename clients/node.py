"""Node-local state of one client: its accountant history and signing key, under the run.

A virtual client is a fresh ClientApp call on whatever Ray actor is free, so nothing may live in
memory between rounds. Everything lives in ``<run_dir>/clients/<client_id>/``:

``accountant/r<round>.json``  the accountant's state after each round the client trained;
``signing.key`` (+ ``.pub``)   its Ed25519 key for privacy reports (public half registered with
                                the coordinator's ``KeyRegistry`` when the run is provisioned).

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


class NodeState:
    """The persisted state of ``client_id`` within one run directory."""

    def __init__(self, run_dir: str | Path, client_id: str) -> None:
        self.client_id = check_client_id(client_id)
        self.dir = Path(run_dir) / "clients" / client_id

    @property
    def key_path(self) -> Path:
        return self.dir / "signing.key"

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


def provision(run_dir: str | Path, client_ids: list[str]) -> KeyRegistry:
    """Give every client a signing key and register the public halves with the coordinator.

    In a real deployment each node generates its key and the operator registers the public key
    out of band; in simulation the run setup plays both parts.
    """
    registry = KeyRegistry(Path(run_dir) / "keys")
    for cid in client_ids:
        node = NodeState(run_dir, cid)
        if not node.key_path.exists():
            generate_signing_key(node.key_path)
        registry.register(cid, public_key_path(node.key_path))
    return registry
