"""The store's ``store.json``: a plaintext header around the encrypted, authenticated manifest.

``store.json`` is ``{"format": "veilfed-store", "version": 1, "key_id": <one-way key fingerprint>,
"manifest": base64(raw Fernet token of the manifest JSON)}``. The manifest (encrypted, so clip ids
stay private too) holds the chunk size and, per clip id, the :class:`ClipEntry` (file, chunk
count, total length, nonce) a reader checks every record header against. Only the key whose
fingerprint the header names is tried; a manifest that does not decrypt under it, or does not
parse, is a one-line ``CheckFailed``. Writes replace ``store.json`` atomically (``veilfed.io``);
callers hold the writer lock (:mod:`veilfed.data.lock`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from veilfed.crypto.keys import FernetKey, InvalidToken
from veilfed.data.records import ClipEntry
from veilfed.errors import CheckFailed, UsageError
from veilfed.io import write_text_atomic

FORMAT = "veilfed-store"
VERSION = 1


def read_header(root: Path) -> dict[str, Any]:
    path = root / "store.json"
    if not path.is_file():
        raise UsageError(
            f"{root}: not a veilfed store (no store.json); create one with `veilfed data ingest` "
            "or `veilfed data synth --store`"
        )
    try:
        header = json.loads(path.read_text())
        if header.get("format") != FORMAT or "manifest" not in header or "key_id" not in header:
            raise ValueError
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise CheckFailed(
            f"{path}: store manifest is truncated or damaged; restore store.json from a backup"
        ) from None
    if header.get("version") != VERSION:
        raise UsageError(f"{path}: store format version {header.get('version')} is not supported")
    return header


def load_manifest(
    root: Path, keys: Sequence[FernetKey]
) -> tuple[dict[str, Any], FernetKey, int, dict[str, ClipEntry]]:
    """(header, the key among ``keys`` that opens it, chunk size, clips) of the store."""
    header = read_header(root)
    matching = [k for k in keys if k.key_id == header["key_id"]]
    if not matching:
        names = ", ".join(k.key_id for k in keys)
        raise UsageError(
            f"{root}: store is encrypted with key {header['key_id']}, not key {names}; "
            "use the store's current key file (an old key stops working after `keys rotate`)"
        )
    try:
        token = base64.b64decode(header["manifest"], validate=True)
        manifest = json.loads(matching[0].decrypt(token))
        clips = {cid: ClipEntry.from_json(e) for cid, e in manifest["clips"].items()}
        chunk_size = int(manifest["chunk_size"])
    except (InvalidToken, binascii.Error, ValueError, KeyError, TypeError, AttributeError):
        raise CheckFailed(
            f"{root / 'store.json'}: manifest does not authenticate (tampered or damaged); "
            "restore store.json from a backup"
        ) from None
    return header, matching[0], chunk_size, clips


def write_header(root: Path, header: dict[str, Any]) -> None:
    write_text_atomic(root / "store.json", json.dumps(header, indent=1, sort_keys=True) + "\n")


def write_manifest(
    root: Path,
    header: dict[str, Any],
    key: FernetKey,
    chunk_size: int,
    clips: dict[str, ClipEntry],
) -> dict[str, Any]:
    """Encrypt the manifest under ``key`` into ``header``, write store.json; the new header."""
    manifest = {
        "chunk_size": chunk_size,
        "clips": {cid: e.to_json() for cid, e in sorted(clips.items())},
    }
    token = key.encrypt(json.dumps(manifest, separators=(",", ":")).encode())
    header = {
        **header,
        "key_id": key.key_id,
        "manifest": base64.b64encode(token).decode(),
    }
    write_header(root, header)
    return header
