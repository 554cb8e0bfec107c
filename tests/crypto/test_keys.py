"""Key files (0600, ssh-like refusal) and the raw Fernet token codec."""

from __future__ import annotations

import os
import pickle
import stat

import pytest
from cryptography.fernet import Fernet, MultiFernet

from veilfed.crypto.keys import (
    FernetKey,
    InvalidToken,
    armor,
    read_key_file,
    unarmor,
    write_key_file,
)
from veilfed.errors import UsageError


def test_raw_tokens_are_fernet_tokens_both_ways() -> None:
    key = FernetKey.generate()
    std = Fernet(key.secret())
    for data in (b"", b"x", os.urandom(4099)):
        assert std.decrypt(armor(key.encrypt(data))) == data
        assert key.decrypt(unarmor(std.encrypt(data))) == data
    rotated = MultiFernet([Fernet(FernetKey.generate().secret()), std]).rotate(
        armor(key.encrypt(b"abc"))
    )
    with pytest.raises(InvalidToken):
        key.decrypt(unarmor(rotated))


@pytest.mark.parametrize("damage", ["flip", "truncate", "wrong_key", "empty"])
def test_decrypt_rejects_damage(damage: str) -> None:
    key = FernetKey.generate()
    token = bytearray(key.encrypt(b"secret frames" * 10))
    if damage == "flip":
        token[40] ^= 1
    elif damage == "truncate":
        del token[-16:]
    elif damage == "wrong_key":
        key = FernetKey.generate()
    else:
        token = bytearray()
    with pytest.raises(InvalidToken):
        key.decrypt(bytes(token))


def test_key_never_shows_its_secret() -> None:
    key = FernetKey.generate()
    secret = key.secret().decode()
    assert secret not in repr(key) and secret not in str(key) and secret not in f"{key!r}"
    assert repr(key) == f"FernetKey(id={key.key_id})"
    assert pickle.loads(pickle.dumps(key)) == key
    assert key.derive("client:a") != key.derive("client:b")
    assert key.derive("client:a") == key.derive("client:a")


def test_key_file_roundtrip_mode_0600(tmp_path) -> None:
    path = tmp_path / "k.key"
    key = write_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path) == key
    with pytest.raises(UsageError, match="already exists"):
        write_key_file(path)
    assert read_key_file(path) == key


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_group_or_world_readable_key_refused(tmp_path, mode: int) -> None:
    path = tmp_path / "k.key"
    key = write_key_file(path)
    path.chmod(mode)
    with pytest.raises(UsageError, match="chmod 600") as err:
        read_key_file(path)
    assert key.secret().decode() not in str(err.value)


def test_bad_key_files(tmp_path) -> None:
    with pytest.raises(UsageError, match="not found"):
        read_key_file(tmp_path / "missing.key")
    bad = tmp_path / "bad.key"
    bad.write_text("not-a-key-but-secretish")
    bad.chmod(0o600)
    with pytest.raises(UsageError, match="not a Fernet key file") as err:
        read_key_file(bad)
    assert "secretish" not in str(err.value)
