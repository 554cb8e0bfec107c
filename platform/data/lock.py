"""The store writer lock: one writing command per store at a time, across processes.

Every command that changes a store (``data ingest``, ``data synth --store``, ``data import``,
``keys rotate``) holds an exclusive ``fcntl.flock`` on ``DIR/store.lock`` from before it reads the
manifest until after its last write (manifest commit, orphan sweep). A second writer waits for the
first, up to ``VEILFED_STORE_LOCK_TIMEOUT`` seconds (default :data:`DEFAULT_TIMEOUT_S`), then
refuses with one line; it never interleaves with the first, so no clip is lost to a concurrent
manifest write and no fresh clip file is swept as an orphan. Readers (``data verify``, training)
take no lock: clip files are written before the manifest that names them and the manifest is
replaced atomically.

The lock is advisory and released by the kernel when the process dies, so a crash never leaves a
stale lock behind. ``flock`` needs a local filesystem (not NFS) for cross-host exclusion.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from veilfed.errors import UsageError

LOCK_NAME = "store.lock"
TIMEOUT_ENV = "VEILFED_STORE_LOCK_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
_POLL_S = 0.05

log = logging.getLogger(__name__)


def lock_timeout() -> float:
    """Seconds a writer waits for another writer: ``$VEILFED_STORE_LOCK_TIMEOUT`` or the default."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise UsageError(f"{TIMEOUT_ENV}={raw!r}: must be a number of seconds >= 0")
    return value


@contextlib.contextmanager
def writer_lock(root: str | Path, timeout: float | None = None) -> Iterator[Path]:
    """Hold the exclusive writer lock of the store at ``root`` (which must exist) for the block."""
    root = Path(root)
    path = root / LOCK_NAME
    wait = lock_timeout() if timeout is None else timeout
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UsageError(
            f"{path}: cannot open the store's writer lock ({exc.strerror}); check that {root} is "
            "a writable store directory"
        ) from None
    try:
        deadline = time.monotonic() + wait
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise UsageError(
                        f"{root}: another veilfed command is still writing to this store after "
                        f"{wait:g}s; wait for it to finish and rerun (or raise {TIMEOUT_ENV})"
                    ) from None
                if not announced:
                    log.warning("%s: waiting for another writer to finish", root)
                    announced = True
                time.sleep(_POLL_S)
        try:
            yield path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
