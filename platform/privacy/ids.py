"""Client ids: the one alphabet a client id may use, because ids become file and artifact names.

Invariant: an id is 1 to 128 characters of letters, digits, ``_``, ``.`` and ``-``, starting with a
letter or digit, so ``<dir>/<client_id>.json`` or ``privacy/reports/<client_id>.jsonl`` never
leaves its directory and never names a hidden file.
"""

from __future__ import annotations

import re

from veilfed.errors import UsageError

_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_client_id(client_id: str) -> str:
    """``client_id`` unchanged if it fits the alphabet; a one-line ``UsageError`` otherwise."""
    if not isinstance(client_id, str) or not _CLIENT_ID.match(client_id):
        raise UsageError(
            f"client id {client_id!r}: use letters, digits, '_', '.', '-' (max 128 characters)"
        )
    return client_id
