"""Checks run before a coordinator or node starts: its trust material exists, is current and fits.

Each check reads what ``veilfed certs new`` wrote (layout: ``certs.py``) and refuses, with a
one-line ``UsageError`` naming the file and the flag to fix, a missing or unreadable file, a
certificate that expired or is not valid yet, a server certificate another CA signed, a key that
does not match its certificate, and a private key that group or others can read.
"""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from veilfed.crypto.certs import CA_CERT, SERVER_CERT, SERVER_KEY, CertBundle
from veilfed.errors import UsageError


def _read(path: Path, what: str, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(
            f"{path}: {what} not found; check {flag} (create one with `veilfed certs new`)"
        ) from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read {what} ({exc.strerror}); check {flag}") from None


def load_cert(path: str | Path, flag: str = "--certs") -> x509.Certificate:
    path = Path(path)
    data = _read(path, "certificate", flag)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise UsageError(f"{path}: not a PEM certificate; check {flag}") from None


def check_current(cert: x509.Certificate, path: str | Path, now: dt.datetime | None = None) -> None:
    """Refuse a certificate that has expired or is not valid yet."""
    now = now or dt.datetime.now(dt.UTC)
    if now > cert.not_valid_after_utc:
        raise UsageError(
            f"{path}: certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            "issue new ones with `veilfed certs new`"
        )
    if now < cert.not_valid_before_utc:
        raise UsageError(
            f"{path}: certificate is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check this machine's clock"
        )


def check_signed_by(
    cert: x509.Certificate, ca: x509.Certificate, cert_path: Path, ca_path: Path
) -> None:
    """Refuse a certificate that the given CA did not sign (wrong CA)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise UsageError(
            f"{cert_path}: not signed by the CA in {ca_path} (wrong CA); use the ca.pem from the "
            "same `veilfed certs new` run"
        ) from None


def check_server_material(certs: str | Path, now: dt.datetime | None = None) -> CertBundle:
    """The coordinator's --certs DIR: CA and server cert current, chained, key matching."""
    certs = Path(certs)
    ca_path, cert_path, key_path = certs / CA_CERT, certs / SERVER_CERT, certs / SERVER_KEY
    ca = load_cert(ca_path)
    cert = load_cert(cert_path)
    check_current(ca, ca_path, now)
    check_current(cert, cert_path, now)
    check_signed_by(cert, ca, cert_path, ca_path)
    check_private_mode(key_path, "--certs")
    try:
        key = serialization.load_pem_private_key(_read(key_path, "TLS key", "--certs"), None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise UsageError(f"{key_path}: not a PEM private key; check --certs") from None
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise UsageError(f"{key_path}: does not match the certificate {cert_path}; check --certs")
    return CertBundle(certs, (), cert.not_valid_after_utc)


def check_ca(certs: str | Path, now: dt.datetime | None = None) -> Path:
    """A node's --certs DIR: the CA certificate it verifies the SuperLink with."""
    path = Path(certs) / CA_CERT
    cert = load_cert(path)
    check_current(cert, path, now)
    return path


def check_private_mode(path: Path, flag: str) -> None:
    """Refuse a private key that group or others can read (like ssh)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise UsageError(f"{path}: private key not found; check {flag}") from None
    if mode & 0o077:
        raise UsageError(
            f"{path}: private key is readable by group or others (mode {mode:04o}); "
            f"run `chmod 600 {path}`"
        )


def load_node_private_key(path: str | Path) -> ec.EllipticCurvePrivateKey:
    """A node's --auth-key: an OpenSSH EC private key, as flower-supernode loads it."""
    path = Path(path)
    check_private_mode(path, "--auth-key")
    try:
        key = serialization.load_ssh_private_key(_read(path, "auth key", "--auth-key"), None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError(
            f"{path}: not an OpenSSH EC private key; use a nodes/<node>.key from "
            "`veilfed certs new`"
        )
    return key


def load_node_public_keys(directory: str | Path) -> dict[str, bytes]:
    """The coordinator's --auth-keys DIR: node name -> OpenSSH public key line, one per .pub."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"{directory}: not a directory of node public keys; check --auth-keys")
    keys: dict[str, bytes] = {}
    for path in sorted(directory.glob("*.pub")):
        data = path.read_bytes().strip()
        try:
            key = serialization.load_ssh_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            key = None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise UsageError(f"{path}: not an OpenSSH EC public key; check --auth-keys")
        keys[path.stem] = data
    if not keys:
        raise UsageError(f"{directory}: no *.pub node keys; check --auth-keys")
    return keys
