"""Signed, hash-chained privacy reports: canonical bytes, signatures, keys, chain checks."""

from __future__ import annotations

import dataclasses
import json
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from privacy_testkit import make_chain

from veilfed.errors import CheckFailed, UsageError
from veilfed.privacy.accounting import ClientAccountant
from veilfed.privacy.reports import (
    KeyRegistry,
    PrivacyReport,
    SignedReport,
    check_chain,
    generate_signing_key,
    key_id,
    load_signing_key,
    public_key_path,
    record_round,
    sign,
    verify,
)

DELTA = 1e-5


def test_record_round_links_reports_and_reports_cumulative_epsilon() -> None:
    acc = ClientAccountant("c0")
    acc.step(1.1, 0.05, 30)
    first = record_round(acc, round=1, max_grad_norm=1.0, delta=DELTA, epsilon_budget=8.0)
    assert (first.steps_round, first.steps_total, first.prev_round, first.prev_hash) == (
        30,
        30,
        None,
        "",
    )
    acc.step(1.1, 0.05, 30)
    second = record_round(acc, round=4, max_grad_norm=1.0, delta=DELTA)
    assert (second.steps_round, second.steps_total, second.prev_round) == (30, 60, 1)
    assert second.prev_hash == first.digest()
    assert second.epsilon == acc.epsilon(DELTA) > first.epsilon
    assert (second.noise_multiplier, second.sample_rate, second.accountant) == (1.1, 0.05, "rdp")
    with pytest.raises(UsageError, match="no DP-SGD steps since the last report"):
        record_round(acc, round=5, max_grad_norm=1.0, delta=DELTA)
    acc.step(1.1, 0.05, 5)
    acc.step(1.3, 0.05, 5)
    with pytest.raises(UsageError, match="changed within the round"):
        record_round(acc, round=5, max_grad_norm=1.0, delta=DELTA)


def test_canonical_bytes_are_sorted_and_compact() -> None:
    signed = make_chain("c0", Ed25519PrivateKey.generate(), [1])[0]
    raw = signed.report.canonical()
    data = json.loads(raw)
    assert list(data) == sorted(data)
    assert b" " not in raw and b"\n" not in raw
    assert PrivacyReport.from_dict(data) == signed.report
    assert SignedReport.from_json(signed.to_json()) == signed


def test_report_parsing_names_the_bad_field() -> None:
    data = dataclasses.asdict(make_chain("c0", Ed25519PrivateKey.generate(), [1])[0].report)
    with pytest.raises(UsageError, match="line 3: field 'steps_total' must be an integer"):
        PrivacyReport.from_dict({**data, "steps_total": "12"}, "line 3")
    with pytest.raises(UsageError, match="missing field.*epsilon"):
        PrivacyReport.from_dict({k: v for k, v in data.items() if k != "epsilon"})
    with pytest.raises(UsageError, match="not JSON"):
        SignedReport.from_json("{")


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


def test_chain_accepts_rounds_with_gaps() -> None:
    reports = make_chain("c0", Ed25519PrivateKey.generate(), [1, 3, 4, 9])
    assert check_chain(list(reversed(reports))) == []


def test_chain_problems_name_client_and_round() -> None:
    reports = make_chain("c0", Ed25519PrivateKey.generate(), [1, 3, 4, 9])
    missing = check_chain(reports[:1] + reports[2:])
    assert [str(p) for p in missing] == [
        "client c0 round 4: links to round 3 but the previous report is round 1: "
        "a report is missing or out of place",
        "client c0 round 4: steps_total 60 != previous total 20 + steps_round 20",
    ]
    assert [p.round for p in check_chain(reports[1:])] == [3]
    edited = dataclasses.replace(reports[1].report, steps_round=15)
    problems = check_chain([reports[0], edited, *reports[2:]])
    assert [(p.round, p.reason.split(" ")[0]) for p in problems] == [
        (3, "steps_total"),
        (4, "prev_hash"),
    ]
    consistent = dataclasses.replace(edited, steps_total=35)
    problems = check_chain([reports[0], consistent, *reports[2:]])
    assert [(p.round, p.reason.split(" ")[0]) for p in problems] == [
        (4, "prev_hash"),
        (4, "steps_total"),
    ]
    other = make_chain("c1", Ed25519PrivateKey.generate(), [5])
    assert any("belongs to client c1" in str(p) for p in check_chain(reports + other))
