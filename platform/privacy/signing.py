"""Ed25519 keys and signatures over canonical JSON: client privacy reports and the round log.

A private key is PKCS#8 PEM at ``path`` (mode 0600, refused when readable by others), its public
half SubjectPublicKeyInfo PEM at ``path.pub``; a key id is the first 16 hex digits of SHA-256 of
the raw 32-byte public key.

What is signed and hashed is always :func:`canonical_json`: JSON with sorted keys, no whitespace,
no NaN or infinity, UTF-8. The same object gives the same bytes on every machine, so a signature
or a SHA-256 link made by one party is checked by another. A signature travels as base64.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from veilfed.errors import UsageError
from veilfed.io import write_bytes_atomic


def canonical_json(data: Any) -> bytes:
    """The signed bytes of ``data``: JSON, sorted keys, no whitespace, UTF-8; NaN is refused."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def canonical_hash(data: Any) -> str:
    """SHA-256 hex of :func:`canonical_json`: what a chained record names its predecessor by."""
    return hashlib.sha256(canonical_json(data)).hexdigest()


def sign_b64(private_key: Ed25519PrivateKey, data: bytes) -> str:
    """The base64 Ed25519 signature of ``data``."""
    return base64.b64encode(private_key.sign(data)).decode("ascii")


def verify_b64(public_key: Ed25519PublicKey, signature: str, data: bytes) -> None:
    """Raise unless ``signature`` (base64) is ``public_key``'s signature of ``data``.

    ``cryptography.exceptions.InvalidSignature`` when it does not match; ``binascii.Error``,
    ``ValueError`` or ``TypeError`` when ``signature`` is not base64 text.
    """
    public_key.verify(base64.b64decode(signature, validate=True), data)


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_path(private_key_path: str | Path) -> Path:
    path = Path(private_key_path)
    return path.with_name(path.name + ".pub")


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate_signing_key(path: str | Path) -> Ed25519PrivateKey:
    """New Ed25519 key: PKCS#8 PEM at ``path`` (mode 0600), public PEM at ``path.pub``."""
    path = Path(path)
    if path.exists():
        raise UsageError(f"{path}: already exists; refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_bytes_atomic(path, pem, mode=0o600)
    write_bytes_atomic(public_key_path(path), public_pem(key.public_key()))
    return key


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read signing key ({exc.strerror})") from None
    if mode & 0o077:
        raise UsageError(f"{path}: signing key is readable by others; chmod 600 it")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise UsageError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path}: not an Ed25519 key")
    return key


def load_public_key(
    data: bytes | str | Path | Ed25519PublicKey, where: str = ""
) -> Ed25519PublicKey:
    """A public key from PEM bytes, a PEM file path or an existing key object."""
    if isinstance(data, Ed25519PublicKey):
        return data
    if isinstance(data, Path):
        where = where or str(data)
        try:
            data = data.read_bytes()
        except OSError as exc:
            raise UsageError(f"{where}: cannot read public key ({exc.strerror})") from None
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise UsageError(f"{where or 'public key'}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{where or 'public key'}: not an Ed25519 public key")
    return key
