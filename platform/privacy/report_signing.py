"""Signing a privacy report, verifying it, and the coordinator's registry of client keys.

A client signs each report with its own Ed25519 key (``signing.py`` keeps the key files). The
coordinator verifies it against the key registered for that client (:class:`KeyRegistry`) before
accepting the update, and refuses unsigned or mis-signed updates (it logs and continues the
round). The audit runs the same :func:`verify` on every stored report.
"""

from __future__ import annotations

import binascii
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from veilfed.errors import CheckFailed
from veilfed.io import write_bytes_atomic
from veilfed.privacy.ids import check_client_id
from veilfed.privacy.report_schema import PrivacyReport, SignedReport
from veilfed.privacy.signing import key_id, load_public_key, public_pem, sign_b64, verify_b64


def sign(report: PrivacyReport, private_key: Ed25519PrivateKey) -> SignedReport:
    """``report`` signed over its canonical bytes, with the id of the signing key."""
    return SignedReport(
        report, sign_b64(private_key, report.canonical()), key_id(private_key.public_key())
    )


def verify(signed: SignedReport, public_key: Ed25519PublicKey) -> None:
    """Raise :class:`CheckFailed` (one line, client and round) unless the signature holds."""
    rep = signed.report
    who = f"client {rep.client_id} round {rep.round}"
    if signed.key_id != key_id(public_key):
        raise CheckFailed(
            f"{who}: report signed with key {signed.key_id}, but the registered key is "
            f"{key_id(public_key)}; refuse the update"
        )
    try:
        verify_b64(public_key, signed.signature, rep.canonical())
    except (InvalidSignature, binascii.Error, ValueError):
        raise CheckFailed(
            f"{who}: signature does not match the report (altered after signing?); "
            "refuse the update"
        ) from None


class KeyRegistry:
    """The coordinator's client id -> public key map: ``<dir>/<client_id>.pub`` (PEM)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, client_id: str) -> Path:
        return self.directory / f"{check_client_id(client_id)}.pub"

    def register(self, client_id: str, public_key: bytes | str | Path | Ed25519PublicKey) -> None:
        """Register a client's key; re-registering a *different* key is refused (CheckFailed)."""
        key = load_public_key(public_key, f"client {client_id}")
        path = self.path(client_id)
        if path.exists():
            if key_id(self.get(client_id)) == key_id(key):
                return
            raise CheckFailed(
                f"client {client_id}: already registered with key {key_id(self.get(client_id))}; "
                f"remove {path} to rotate its key"
            )
        write_bytes_atomic(path, public_pem(key))

    def get(self, client_id: str) -> Ed25519PublicKey:
        path = self.path(client_id)
        if not path.exists():
            raise CheckFailed(f"client {client_id}: no public key registered; refuse its updates")
        return load_public_key(path)

    def __contains__(self, client_id: str) -> bool:
        return self.path(client_id).exists()

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        return {p.stem: load_public_key(p) for p in sorted(self.directory.glob("*.pub"))}

    def verify(self, signed: SignedReport | None, client_id: str) -> PrivacyReport:
        """The report of ``client_id`` if signed by its registered key; else CheckFailed."""
        if signed is None:
            raise CheckFailed(f"client {client_id}: update has no signed privacy report; refused")
        if signed.report.client_id != client_id:
            raise CheckFailed(
                f"client {client_id}: report is for client {signed.report.client_id} "
                f"(round {signed.report.round}); refused"
            )
        verify(signed, self.get(client_id))
        return signed.report
