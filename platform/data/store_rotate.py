"""Store maintenance under the writer lock: key rotation and the sweep of crash leftovers.

:func:`rotate_store` re-encrypts every clip and the manifest from the old key to the new one with
``MultiFernet``, checking each clip before rotating it; until the single atomic store.json write
at its end the store is exactly the old store, after it exactly the new one. :func:`sweep_orphans`
deletes clip and temp files the manifest does not reference. Both hold the store's writer lock
(:mod:`veilfed.data.lock`), so no live writer's uncommitted clip is ever swept.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.fernet import MultiFernet

from veilfed.crypto.keys import FernetKey, armor, unarmor
from veilfed.data.records import decrypt_clip
from veilfed.data.store import EncryptedStore
from veilfed.data.store_manifest import read_header
from veilfed.errors import UsageError

log = logging.getLogger(__name__)


def rotate_store(root: str | Path, old: FernetKey, new: FernetKey) -> int:
    """Re-encrypt every clip and the manifest from ``old`` to ``new`` with MultiFernet.

    Crash-safe: rotated clips go to new files while store.json (manifest under the old key) still
    points at the old ones, so until the single atomic store.json write at the end the store is
    exactly the old store; after it, exactly the new one. Leftovers of a crash are swept on re-run.
    The writer lock is held throughout: no other writer's clip is swept or left under the old key.
    """
    root = Path(root)
    if old == new:
        raise UsageError("old and new key files hold the same key; create one with `keys new`")
    header = read_header(root)
    if header["key_id"] == new.key_id:
        raise UsageError(f"{root}: store is already encrypted with the new key {new.key_id}")
    store = EncryptedStore.open(root, old)
    with store.locked():
        sweep_orphans(store)
        multi = MultiFernet([new.fernet(), old.fernet()])
        with store.batch():
            for clip_id in store.ids():
                entry = store.entry(clip_id)
                records = store.records(clip_id)
                decrypt_clip((old,), clip_id, entry, records, str(root))  # never rotate a bad clip
                rotated = [unarmor(multi.rotate(armor(bytes(t)))) for t in records]
                store.put_records(clip_id, rotated, entry, replace=True)
            store.keys = (new,)
        sweep_orphans(store)
    return len(store)


def sweep_orphans(store: EncryptedStore) -> int:
    """Delete clip files and temp files the manifest does not reference (left by a crash).

    Runs under the writer lock, so a file is an orphan only if no writer can still commit it.
    Anything that is not a plain file (a directory someone put there) is left alone.
    """
    n = 0
    with store.locked():
        live = {store.entry(cid).file for cid in store.ids()}
        for path in (store.root / "clips").iterdir():
            if path.name in live:
                continue
            if path.is_dir() and not path.is_symlink():
                log.warning("%s: not a clip file; left in place", path)
                continue
            path.unlink(missing_ok=True)
            n += 1
    return n
