"""Signed reports: tampering and wrong keys are refused; the coordinator's key registry."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from testkit.privacy import make_chain

from veilfed.errors import CheckFailed
from veilfed.privacy.report_signing import KeyRegistry, sign, verify
from veilfed.privacy.signing import generate_signing_key, key_id, public_key_path


def test_sign_and_verify_detect_tampering_and_wrong_keys() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    signed = make_chain("c0", key, [1, 2])[1]
    verify(signed, key.public_key())
    tampered = dataclasses.replace(
        signed, report=dataclasses.replace(signed.report, epsilon=signed.report.epsilon / 2)
    )
    with pytest.raises(CheckFailed, match="client c0 round 2: signature does not match"):
        verify(tampered, key.public_key())
    with pytest.raises(CheckFailed, match="client c0 round 2: report signed with key"):
        verify(signed, other.public_key())
    forged = dataclasses.replace(sign(signed.report, other), key_id=key_id(key.public_key()))
    with pytest.raises(CheckFailed, match="signature does not match"):
        verify(forged, key.public_key())
    with pytest.raises(CheckFailed, match="signature does not match"):
        verify(dataclasses.replace(signed, signature="%%%"), key.public_key())


def test_key_registry_verifies_updates(tmp_path) -> None:
    key = generate_signing_key(tmp_path / "c0.key")
    registry = KeyRegistry(tmp_path / "registry")
    registry.register("c0", public_key_path(tmp_path / "c0.key"))
    registry.register("c0", key.public_key())  # same key again is fine
    assert "c0" in registry and "c1" not in registry
    signed = make_chain("c0", key, [1])[0]
    assert registry.verify(signed, "c0") == signed.report
    with pytest.raises(CheckFailed, match="client c0: update has no signed privacy report"):
        registry.verify(None, "c0")
    with pytest.raises(CheckFailed, match="client c1: report is for client c0"):
        registry.verify(signed, "c1")
    with pytest.raises(CheckFailed, match="client c1: no public key registered"):
        registry.verify(make_chain("c1", key, [1])[0], "c1")
    with pytest.raises(CheckFailed, match="already registered with key"):
        registry.register("c0", Ed25519PrivateKey.generate().public_key())
    assert list(registry.public_keys()) == ["c0"]
