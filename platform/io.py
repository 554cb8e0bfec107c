"""Atomic file writes: write to a temp name in the same directory, fsync, then rename.

Every output veilfed writes goes through here so a crash never leaves a half-written file and never
replaces the only good copy with a partial one.

User-named outputs (``--out``, ``--summary-json``) never replace an existing file unless the user
passed ``--force``: commands call :func:`check_new_output` before doing any work (so nothing is
computed only to be refused) and write with ``overwrite=False``, whose final step is a hard link
that fails if the name appeared meanwhile, so a file the command did not create is never replaced,
not even by a race. ``--force`` never lets an output replace one of the command's own inputs.
Internal state (store manifests, accountants, checkpoints) is replaced in place. The directory is
fsynced after the rename so the new name survives a power loss.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from veilfed.errors import UsageError


def _exists_message(path: Path, flag: str) -> str:
    return f"{path}: already exists; choose another {flag} or pass --force to replace it"


def _is_input(path: Path, given: Path) -> bool:
    """Whether writing ``path`` would write over the input ``given`` (a file or a directory).

    Links count: a path that is, or points at, the input file is the input; a path resolving
    inside an input directory (a store) is part of that input.
    """
    if not os.path.lexists(given):
        return False
    if os.path.exists(path) and os.path.samefile(path, given):
        return True
    return given.is_dir() and path.resolve().is_relative_to(given.resolve())


def check_new_output(
    path: str | Path,
    force: bool = False,
    flag: str = "--out",
    inputs: Iterable[str | Path | None] = (),
) -> Path:
    """Refuse (one line, naming ``flag``) a path that exists unless ``force``; never a directory.

    A dangling symlink counts as existing: writing through it would create a file elsewhere.
    A path that is one of the command's ``inputs`` (key files, a store directory or a file in it;
    ``None`` entries are skipped) is refused even with ``force``: replacing the store key with the
    command's output would destroy the only copy of that key.
    """
    path = Path(path)
    for given in (Path(p) for p in inputs if p is not None):
        if _is_input(path, given):
            raise UsageError(
                f"{path}: is the input {given}; writing {flag} there would destroy it, so it is "
                f"refused even with --force; choose another {flag}"
            )
    if path.is_dir():
        raise UsageError(f"{path}: is a directory; give {flag} a file path")
    if not force and os.path.lexists(path):
        raise UsageError(_exists_message(path, flag))
    return path


def _link_new(tmp: str, path: Path, flag: str) -> None:
    """Give ``tmp`` the name ``path`` only if no such name exists (atomic, no replace)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise UsageError(_exists_message(path, flag)) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # No hard links here: claim the name exclusively, then replace only our own placeholder.
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            raise UsageError(_exists_message(path, flag)) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_writer(
    path: str | Path, mode: int = 0o644, *, overwrite: bool = True, flag: str = "--out"
) -> Iterator[BinaryIO]:
    """Yield a binary file object; on clean exit it atomically becomes ``path``.

    With ``overwrite=False`` an existing ``path`` is never replaced: the write fails with a
    one-line :class:`UsageError` naming ``flag`` and the existing file is left untouched.
    """
    path = Path(path)
    if not overwrite:
        check_new_output(path, force=False, flag=flag)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UsageError(
            f"{path.parent}: cannot write here ({exc.strerror}); choose a writable directory"
        ) from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path, flag)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(
    path: str | Path, data: bytes, mode: int = 0o644, *, overwrite: bool = True, flag: str = "--out"
) -> None:
    with atomic_writer(path, mode, overwrite=overwrite, flag=flag) as fh:
        fh.write(data)


def write_text_atomic(
    path: str | Path, text: str, mode: int = 0o644, *, overwrite: bool = True, flag: str = "--out"
) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), mode, overwrite=overwrite, flag=flag)
