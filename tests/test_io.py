"""veilfed.io: atomic writes; user outputs never replace a file the command did not make."""

from __future__ import annotations

import pytest

from veilfed.errors import UsageError
from veilfed.io import atomic_writer, check_new_output, write_bytes_atomic


def test_check_new_output(tmp_path) -> None:
    fresh = tmp_path / "new.json"
    assert check_new_output(fresh) == fresh
    fresh.write_text("x")
    with pytest.raises(UsageError, match=r"new.json: already exists; choose another --summary"):
        check_new_output(fresh, flag="--summary-json")
    assert check_new_output(fresh, force=True) == fresh
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "target")
    with pytest.raises(UsageError, match="already exists"):
        check_new_output(link)
    with pytest.raises(UsageError, match="is a directory"):
        check_new_output(tmp_path, force=True)


def test_an_input_is_never_an_output_even_with_force(tmp_path) -> None:
    """Attack: `--out store.key --force`, a link to the key, a file inside the store."""
    key = tmp_path / "store.key"
    key.write_bytes(b"only copy")
    store = tmp_path / "store"
    (store / "clips").mkdir(parents=True)
    (store / "store.json").write_text("{}")
    link = tmp_path / "link.vfs"
    link.symlink_to(key)
    inputs = (store, key, None)
    for out in (key, link, tmp_path / "." / "store.key", store / "store.json", store / "new.vfs"):
        with pytest.raises(UsageError, match="is the input .* refused even with --force"):
            check_new_output(out, force=True, inputs=inputs)
    other = tmp_path / "other.vfs"
    other.write_bytes(b"old bundle")
    assert check_new_output(other, force=True, inputs=inputs) == other  # --force still works
    assert check_new_output(tmp_path / "fresh.vfs", inputs=(tmp_path / "missing.key",))
    assert key.read_bytes() == b"only copy"


def test_a_file_that_appears_during_the_write_is_never_replaced(tmp_path) -> None:
    """The race a check-then-rename loses: another process creates the name mid-write."""
    path = tmp_path / "owner.key"
    with (
        pytest.raises(UsageError, match="already exists"),
        atomic_writer(path, overwrite=False) as fh,
    ):
        fh.write(b"bundle bytes")
        path.write_bytes(b"the only copy of a key")
    assert path.read_bytes() == b"the only copy of a key"
    assert [p.name for p in tmp_path.iterdir()] == ["owner.key"]  # no temp file left


def test_overwrite_false_creates_and_overwrite_true_replaces(tmp_path) -> None:
    path = tmp_path / "out.bin"
    write_bytes_atomic(path, b"one", overwrite=False)
    assert path.read_bytes() == b"one"
    with pytest.raises(UsageError):
        write_bytes_atomic(path, b"two", overwrite=False)
    write_bytes_atomic(path, b"three")
    assert path.read_bytes() == b"three" and len(list(tmp_path.iterdir())) == 1
