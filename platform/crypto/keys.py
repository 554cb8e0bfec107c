"""Fernet key files and the raw-token codec the encrypted store and bundles use.

A key file holds one Fernet key (44 url-safe base64 characters) and must be mode 0600: like ssh,
reading a key that group or others can read is refused. :class:`FernetKey` never shows its secret in
``repr``/``str``, so keys cannot leak into logs, MLflow params or error messages by accident; it is
identified by ``key_id``, a one-way HKDF fingerprint that is safe to print.

Tokens are Fernet tokens exactly as the spec lays them out (version 0x80 | timestamp | IV |
AES-128-CBC ciphertext | HMAC-SHA256), kept in binary instead of url-safe base64. Python's base64
is the largest part of ``Fernet.decrypt``'s cost (~3x the AES + HMAC work on 1 MiB), so storing the
raw bytes both saves a third of the disk and keeps decryption small next to video decoding.
:func:`armor`/:func:`unarmor` convert to and from the standard form, so every raw token is a valid
``cryptography.fernet`` token (tested both ways) and key rotation uses ``MultiFernet`` itself.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
import struct
import time
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes, hmac, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from veilfed.errors import UsageError
from veilfed.io import write_bytes_atomic

__all__ = [
    "FernetKey",
    "InvalidToken",
    "armor",
    "unarmor",
    "read_key_file",
    "write_key_file",
]

_VERSION = 0x80
_HEADER = 1 + 8 + 16  # version, timestamp, IV
_MAC = 32
_MIN_TOKEN = _HEADER + 16 + _MAC  # PKCS7 always adds at least one block


class FernetKey:
    """One Fernet key: encrypts to / decrypts from raw (binary) Fernet tokens."""

    __slots__ = ("_encryption", "_key", "_signing", "key_id")

    def __init__(self, key: bytes | str) -> None:
        try:
            raw = base64.urlsafe_b64decode(key)
        except (binascii.Error, ValueError, TypeError):
            raw = b""
        if len(raw) != 32:
            raise ValueError("not a Fernet key (expected 32 bytes in url-safe base64)")
        self._key = base64.urlsafe_b64encode(raw)
        self._signing = raw[:16]
        self._encryption = raw[16:]
        self.key_id = _hkdf(raw, b"veilfed key id v1", 8).hex()

    @classmethod
    def generate(cls) -> FernetKey:
        return cls(Fernet.generate_key())

    def secret(self) -> bytes:
        """The key in Fernet's url-safe base64 form; only for writing key files and MultiFernet."""
        return self._key

    def fernet(self) -> Fernet:
        return Fernet(self._key)

    def derive(self, context: str) -> FernetKey:
        """A new independent key bound to ``context`` (e.g. a client id); one-way (HKDF)."""
        info = b"veilfed derive v1:" + context.encode()
        raw = _hkdf(base64.urlsafe_b64decode(self._key), info, 32)
        return FernetKey(base64.urlsafe_b64encode(raw))

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """Encrypt to a raw Fernet token (the spec's binary layout)."""
        iv = os.urandom(16)
        padder = padding.PKCS7(128).padder()
        padded = padder.update(data) + padder.finalize()
        enc = Cipher(algorithms.AES(self._encryption), modes.CBC(iv)).encryptor()
        body = struct.pack(">BQ", _VERSION, int(time.time())) + iv + enc.update(padded)
        body += enc.finalize()
        mac = hmac.HMAC(self._signing, hashes.SHA256())
        mac.update(body)
        return body + mac.finalize()

    def decrypt(self, token: bytes | memoryview) -> bytes:
        """Authenticate and decrypt a raw token; raises :class:`InvalidToken` on any mismatch."""
        mv = memoryview(token)
        if len(mv) < _MIN_TOKEN or mv[0] != _VERSION or (len(mv) - _HEADER - _MAC) % 16:
            raise InvalidToken
        mac = hmac.HMAC(self._signing, hashes.SHA256())
        mac.update(mv[:-_MAC])
        try:
            mac.verify(bytes(mv[-_MAC:]))
        except InvalidSignature:
            raise InvalidToken from None
        dec = Cipher(algorithms.AES(self._encryption), modes.CBC(bytes(mv[9:_HEADER]))).decryptor()
        padded = dec.update(mv[_HEADER:-_MAC]) + dec.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        try:
            return unpadder.update(padded) + unpadder.finalize()
        except ValueError:
            raise InvalidToken from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FernetKey) and other._key == self._key

    def __hash__(self) -> int:
        return hash(self.key_id)

    def __repr__(self) -> str:
        return f"FernetKey(id={self.key_id})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[type[FernetKey], tuple[bytes]]:
        # DataLoader workers need the key; pickles stay in-process (fork/spawn pipes).
        return (FernetKey, (self._key,))


def _hkdf(raw: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(raw)


def armor(raw_token: bytes) -> bytes:
    """Raw token -> the standard url-safe base64 Fernet token."""
    return base64.urlsafe_b64encode(raw_token)


def unarmor(token: bytes) -> bytes:
    """Standard Fernet token -> raw token."""
    return base64.urlsafe_b64decode(token)


def write_key_file(path: str | Path, key: FernetKey | None = None) -> FernetKey:
    """Write a new (or the given) key to ``path`` with mode 0600; never overwrites a file."""
    path = Path(path)
    if os.path.lexists(path):  # a dangling symlink too: never write a key somewhere unseen
        raise UsageError(
            f"{path}: already exists; refusing to overwrite a key file (choose another --out)"
        )
    key = key or FernetKey.generate()
    write_bytes_atomic(path, key.secret() + b"\n", mode=0o600, overwrite=False)
    return key


def read_key_file(path: str | Path) -> FernetKey:
    """Load a key file, refusing one that group or others can read (like ssh)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UsageError(
            f"{path}: key file not found; create one with `veilfed keys new --out {path}`"
        ) from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read key file ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{path}: key file is not a regular file")
    if st.st_mode & 0o077:
        raise UsageError(
            f"{path}: key file is readable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}` and keep it private"
        )
    try:
        data = path.read_bytes().strip()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read key file ({exc.strerror})") from None
    try:
        return FernetKey(data)
    except ValueError:
        raise UsageError(
            f"{path}: not a Fernet key file; create one with `veilfed keys new --out FILE`"
        ) from None
