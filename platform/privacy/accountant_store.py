"""The node's persisted accountants: one JSON state file per client id, replaced atomically.

This is the one path a client's privacy spend is read from and written to
(``veilfed.clients.node_state`` keeps its accountants here). A file holds
``ClientAccountant.state_dict()`` (its invariants: ``accountant.py``); a file that cannot be read
or breaks an invariant is refused, never replaced by a fresh accountant, because deleting it would
reset the client's spend.
"""

from __future__ import annotations

import json
from pathlib import Path

from veilfed.errors import UsageError
from veilfed.io import write_text_atomic
from veilfed.privacy.accountant import ClientAccountant
from veilfed.privacy.ids import check_client_id


class AccountantStore:
    """The node's accountants: ``<dir>/<client_id>.json``, each replaced atomically."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, client_id: str) -> Path:
        return self.directory / f"{check_client_id(client_id)}.json"

    def exists(self, client_id: str) -> bool:
        return self.path(client_id).is_file()

    def load(
        self, client_id: str, mechanism: str = "rdp", recompose: bool = False
    ) -> ClientAccountant:
        """The client's accountant, or a fresh one when it has never trained on this node
        (``recompose``: see :meth:`ClientAccountant.load_state_dict`)."""
        path = self.path(client_id)
        acc = ClientAccountant(client_id, mechanism)
        if not path.exists():
            return acc
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(
                f"{path}: cannot read accountant state ({exc}); restore it from a backup — "
                "deleting it would reset this client's privacy spend"
            ) from None
        try:
            acc.load_state_dict(state, recompose=recompose)
        except UsageError as exc:
            raise UsageError(f"{path}: {exc}") from None
        return acc

    def save(self, acc: ClientAccountant) -> Path:
        """Replace the client's state file with ``acc``'s state; its path."""
        path = self.path(acc.client_id)
        write_text_atomic(path, json.dumps(acc.state_dict(), sort_keys=True, indent=1) + "\n")
        return path
