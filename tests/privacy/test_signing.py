"""Ed25519 key files and canonical-JSON signatures shared by reports and the round log."""

from __future__ import annotations

import binascii
import stat

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veilfed.errors import UsageError
from veilfed.privacy.signing import (
    canonical_hash,
    canonical_json,
    generate_signing_key,
    key_id,
    load_signing_key,
    public_key_path,
    sign_b64,
    verify_b64,
)


def test_generated_key_files(tmp_path) -> None:
    path = tmp_path / "keys" / "c0.key"
    key = generate_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_path(path).read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    loaded = load_signing_key(path)
    assert key_id(loaded.public_key()) == key_id(key.public_key())
    with pytest.raises(UsageError, match="refusing to overwrite"):
        generate_signing_key(path)
    path.chmod(0o644)
    with pytest.raises(UsageError, match="chmod 600"):
        load_signing_key(path)
    with pytest.raises(UsageError, match="cannot read signing key"):
        load_signing_key(tmp_path / "missing.key")


def test_canonical_json_is_key_order_free_and_refuses_nan() -> None:
    assert canonical_json({"b": 1, "a": [1.5, None]}) == b'{"a":[1.5,null],"b":1}'
    assert canonical_hash({"a": 1, "b": 2}) == canonical_hash({"b": 2, "a": 1})
    with pytest.raises(ValueError):
        canonical_json({"epsilon": float("nan")})


def test_b64_signatures_bind_key_and_bytes() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    signature = sign_b64(key, b"round 1")
    verify_b64(key.public_key(), signature, b"round 1")
    with pytest.raises(InvalidSignature):
        verify_b64(key.public_key(), signature, b"round 2")
    with pytest.raises(InvalidSignature):
        verify_b64(other.public_key(), signature, b"round 1")
    with pytest.raises(binascii.Error):
        verify_b64(key.public_key(), "%%%", b"round 1")
