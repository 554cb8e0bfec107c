"""The privacy report schema: canonical bytes, one-line parsing errors, bounded inputs."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from testkit.privacy import make_chain

from veilfed.errors import UsageError
from veilfed.privacy.audit_accountant import rdp_epsilon
from veilfed.privacy.report_schema import PrivacyReport, SignedReport
from veilfed.privacy.report_signing import sign


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


@pytest.mark.parametrize("orders", [[1e9], [1e300], [256.5], [2.0] * 201])
def test_unbounded_renyi_orders_are_refused_fast(orders) -> None:
    """A signed report with one huge order would stall the recomputation (α + 1 terms); the
    coordinator's check (SignedReport.from_json) and the audit refuse it on parsing."""
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
