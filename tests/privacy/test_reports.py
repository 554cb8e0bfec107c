"""Signed, hash-chained privacy reports: canonical bytes, signatures, keys, chain checks."""

from __future__ import annotations

import dataclasses
import json
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from testkit.privacy import digest, make_chain

from veilfed.errors import CheckFailed, UsageError
from veilfed.privacy.accountant import ClientAccountant
from veilfed.privacy.report_chain import check_chain, record_round
from veilfed.privacy.report_schema import PrivacyReport, SignedReport
from veilfed.privacy.report_signing import KeyRegistry, sign, verify
from veilfed.privacy.signing import (
    generate_signing_key,
    key_id,
    load_signing_key,
    public_key_path,
)

DELTA = 1e-5


def _record(acc, rnd, run_id="run-a", **kw):
    return record_round(
        acc, run_id=run_id, round=rnd, model_digest=digest(run_id, rnd), max_grad_norm=1.0,
        delta=DELTA, **kw,
    )  # fmt: skip


def test_record_round_links_reports_and_reports_cumulative_epsilon() -> None:
    acc = ClientAccountant("c0")
    acc.step(1.1, 0.05, 30)
    first = _record(acc, 1, epsilon_budget=8.0)
    assert (first.steps_round, first.steps_total, first.prev_round, first.prev_hash) == (
        30,
        30,
        None,
        "",
    )
    assert (first.run_id, first.model_digest, first.prior) == ("run-a", digest("run-a", 1), ())
    assert first.orders is not None and first.orders[0] == 1.1 and first.orders[-1] == 63.0
    acc.step(1.1, 0.05, 30)
    second = _record(acc, 4)
    assert (second.steps_round, second.steps_total, second.prev_round) == (30, 60, 1)
    assert second.prev_hash == first.digest()
    assert second.epsilon == acc.epsilon(DELTA) > first.epsilon
    assert (second.noise_multiplier, second.sample_rate, second.accountant) == (1.1, 0.05, "rdp")
    with pytest.raises(UsageError, match="no DP-SGD steps since the last report"):
        _record(acc, 5)
    with pytest.raises(UsageError, match="round must be after the last reported round 4"):
        acc.step(1.1, 0.05, 5)
        _record(acc, 4)
    acc.step(1.3, 0.05, 5)
    with pytest.raises(UsageError, match="changed within the round"):
        _record(acc, 5)


def test_first_report_of_a_run_declares_the_prior_spend() -> None:
    """A node's accountant composes across runs: the new run's chain starts fresh, and its
    first report declares what was spent before, so the audit recomputes all of it."""
    acc = ClientAccountant("c0")
    acc.select_run("run-a")
    acc.step(1.1, 0.05, 30)
    _record(acc, 1)
    acc.select_run("run-b")
    acc.step(0.9, 0.05, 10)
    first_b = _record(acc, 1, run_id="run-b")
    assert (first_b.prev_round, first_b.prev_hash) == (None, "")
    assert first_b.prior == ((1.1, 0.05, 30),)
    assert first_b.steps_total == 40 and first_b.epsilon == acc.epsilon(DELTA)
    assert check_chain([first_b]) == []
    with pytest.raises(UsageError, match="chain is for run run-b, not run-a"):
        acc.step(0.9, 0.05, 10)
        _record(acc, 2, run_id="run-a")


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


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"delta": 0.0}, "field 'delta' must be in (0, 1)"),
        ({"delta": 1.0}, "field 'delta' must be in (0, 1)"),
        ({"noise_multiplier": -1.0}, "field 'noise_multiplier' must be > 0"),
        ({"noise_multiplier": 0}, "field 'noise_multiplier' must be > 0"),
        ({"sample_rate": 1.5}, "field 'sample_rate' must be in (0, 1]"),
        ({"sample_rate": 0.0}, "field 'sample_rate' must be in (0, 1]"),
        ({"steps_round": 10**12}, "field 'steps_round' must be in [1, 1000000000]"),
        ({"steps_round": 0}, "field 'steps_round' must be in [1, 1000000000]"),
        ({"epsilon": -3.0}, "field 'epsilon' must be >= 0"),
        ({"epsilon": float("inf")}, "field 'epsilon' must be finite"),
        ({"orders": None}, "must declare its Rényi 'orders'"),
        ({"orders": [1.0]}, "each order must be in (1, 256]"),
        ({"orders": []}, "list of 1 to 200 numbers"),
        ({"model_digest": "abc"}, "64 lowercase hex digits"),
        ({"run_id": ""}, "field 'run_id' must name the run"),
        ({"prior": [[-1.0, 0.1, 3]]}, "prior[0]: noise_multiplier must be > 0"),
        ({"steps_total": 5}, "less than the prior and this round's steps"),
        ({"version": 1}, "report version 1 is not supported"),
    ],
)
def test_out_of_range_reports_are_one_line_errors(changes, message) -> None:
    data = dataclasses.asdict(make_chain("c0", Ed25519PrivateKey.generate(), [1])[0].report)
    with pytest.raises(UsageError) as err:
        PrivacyReport.from_dict({**data, **changes}, "report")
    assert message in str(err.value) and "\n" not in str(err.value)


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


@pytest.mark.parametrize("orders", [[1e9], [1e300], [256.5], [2.0] * 201])
def test_unbounded_renyi_orders_are_refused_fast(orders) -> None:
    """A signed report with one huge order would stall the recomputation (α + 1 terms); the
    coordinator's check (SignedReport.from_json) and the audit refuse it on parsing."""
    import time

    from veilfed.privacy.audit_accountant import rdp_epsilon

    key = Ed25519PrivateKey.generate()
    report = dataclasses.replace(
        make_chain("c0", key, [1])[0].report, orders=tuple(float(a) for a in orders)
    )
    start = time.perf_counter()
    with pytest.raises(UsageError, match="'orders'") as err:
        SignedReport.from_json(sign(report, key).to_json(), "client c0 round 1 report")
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="Rényi orders"):
        rdp_epsilon([(1.0, 0.1, 10)], 1e-5, orders)  # the recomputation guards itself too
    assert time.perf_counter() - start < 1.0
