"""ε audit of real MLflow runs: honest runs pass, every kind of bad input is caught."""

from __future__ import annotations

import dataclasses
import json
import socket

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mlflow.tracking import MlflowClient
from privacy_testkit import DELTA, make_chain

from veilfed.errors import UsageError
from veilfed.privacy.audit import (
    audit_reports,
    audit_run,
    pld_epsilon,
    plot_png,
    rdp_epsilon,
    render_html,
    render_markdown,
)
from veilfed.privacy.reports import log_reports, read_logged_reports, sign


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, MlflowClient, str]:
    """One SQLite store per module (creating its schema takes seconds)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("audit", artifact_location=(root / "artifacts").as_uri())
    return uri, client, exp


def new_run(store, reports, keys, metrics: dict[str, dict[int, float]] | None = None) -> str:
    uri, client, exp = store
    run_id = client.create_run(exp).info.run_id
    log_reports(run_id, reports, keys, tracking_uri=uri)
    for cid, values in (metrics or {}).items():
        for rnd, value in values.items():
            client.log_metric(run_id, f"privacy/client/{cid}/eps", value, step=rnd)
    return run_id


KEYS = {cid: Ed25519PrivateKey.generate() for cid in ("c0", "c1", "c2")}
PUBS = {cid: k.public_key() for cid, k in KEYS.items()}


def honest() -> list:
    return make_chain("c0", KEYS["c0"], [1, 2, 4]) + make_chain(
        "c1", KEYS["c1"], [1, 3], sigma=1.2, rate=0.08, steps=10
    )


def test_honest_run_verifies(store) -> None:
    reports = honest()
    metrics = {"c0": {r.report.round: r.report.epsilon for r in reports[:3]}}
    run_id = new_run(store, reports, PUBS, metrics)
    result = audit_run(run_id, store[0])
    assert result.ok, [str(v) for v in result.violations]
    assert [(c.client_id, c.round) for c in result.checks] == [
        ("c0", 1),
        ("c0", 2),
        ("c0", 4),
        ("c1", 1),
        ("c1", 3),
    ]
    last = result.checks[2]
    assert last.steps_total == 60
    assert last.rdp == pytest.approx(rdp_epsilon([(1.1, 0.05, 60)], DELTA))
    assert abs(last.rel_diff) < 0.01 and last.pld < last.rdp
    data = result.to_dict()
    assert data["ok"] is True and data["clients"]["c1"]["rounds"] == [1, 3]
    png = plot_png(result)
    assert png.startswith(b"\x89PNG")
    md = render_markdown(result, "eps.png")
    assert "Privacy audit — OK" in md and "![cumulative ε by round](eps.png)" in md
    assert "| c1 | 3 | 20 |" in md
    page = render_html(result, png)
    assert "data:image/png;base64," in page and "<table>" in page


def test_prv_claims_are_checked_against_pld() -> None:
    from veilfed.privacy.accounting import ClientAccountant
    from veilfed.privacy.reports import record_round

    acc = ClientAccountant("c2", "prv")
    acc.step(1.0, 0.05, 100)
    signed = sign(record_round(acc, round=1, max_grad_norm=1.0, delta=DELTA), KEYS["c2"])
    result = audit_reports({"c2": [signed]}, PUBS)
    assert result.ok
    assert result.checks[0].claimed == pytest.approx(result.checks[0].pld, rel=0.01)
    low = dataclasses.replace(signed.report, epsilon=result.checks[0].pld * 0.9)
    bad = audit_reports({"c2": [sign(low, KEYS["c2"])]}, PUBS)
    assert [v.kind for v in bad.violations] == ["mismatch"]
    assert "understates the PLD" in str(bad.violations[0])


def _tamper(reports, index, **changes):
    out = list(reports)
    out[index] = dataclasses.replace(
        out[index], report=dataclasses.replace(out[index].report, **changes)
    )
    return out


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epsilon": 0.5}, "client c0 round 2: signature does not match"),
        ({"noise_multiplier": 3.0}, "client c0 round 2: signature does not match"),
        ({"steps_round": 10, "steps_total": 30}, "client c0 round 2: signature does not match"),
    ],
)
def test_changes_after_signing_cannot_be_audited(store, changes, message) -> None:
    run_id = new_run(store, _tamper(honest(), 1, **changes), PUBS)
    with pytest.raises(UsageError, match=f"^cannot audit: {message}"):
        audit_run(run_id, store[0])


def test_signature_by_wrong_key_cannot_be_audited(store) -> None:
    reports = honest()
    reports[4] = sign(reports[4].report, KEYS["c0"])  # c1's report signed with c0's key
    run_id = new_run(store, reports, PUBS)
    with pytest.raises(UsageError, match="client c1 round 3: report signed with key"):
        audit_run(run_id, store[0])


def test_signed_false_claim_is_a_violation(store) -> None:
    reports = honest()
    lie = dataclasses.replace(reports[2].report, epsilon=reports[2].report.epsilon * 0.95)
    reports[2] = sign(lie, KEYS["c0"])  # the client itself signs an understated ε
    run_id = new_run(store, reports, PUBS)
    result = audit_run(run_id, store[0])
    assert [(v.client_id, v.round, v.kind) for v in result.violations] == [("c0", 4, "mismatch")]
    assert "differs from the RDP recomputation" in str(result.violations[0])
    assert "VIOLATION" in render_markdown(result)


def test_signed_false_sigma_is_a_violation() -> None:
    reports = make_chain("c0", KEYS["c0"], [1])
    lie = dataclasses.replace(reports[0].report, noise_multiplier=2.0)  # claims more noise
    result = audit_reports({"c0": [sign(lie, KEYS["c0"])]}, PUBS)
    assert [v.kind for v in result.violations] == ["mismatch"]


def test_budget_violation(store) -> None:
    run_id = new_run(store, honest(), PUBS)
    eps_c0 = rdp_epsilon([(1.1, 0.05, 60)], DELTA)
    result = audit_run(run_id, store[0], budget=eps_c0 * 0.99)
    assert [(v.client_id, v.round, v.kind) for v in result.violations] == [("c0", 4, "budget")]
    stricter = audit_run(run_id, store[0], budget=eps_c0 * 1.01, delta=1e-7)
    assert ("c0", 4, "budget") in [(v.client_id, v.round, v.kind) for v in stricter.violations]
    assert stricter.checks[2].epsilon_at_audit_delta > stricter.checks[2].rdp


def test_verified_claim_at_the_budget_is_not_a_violation() -> None:
    """A claim within tolerance of the recomputation, spending exactly the budget, passes even
    when the independent accountant's last digits land just above it (as Opacus' and
    dp-accounting's conversions do at the demo's settings)."""
    honest_report = make_chain("c0", KEYS["c0"], [1])[0].report
    rdp = rdp_epsilon([(1.1, 0.05, 20)], DELTA)
    claim = rdp * 0.997  # within 1 % below the recomputation
    report = dataclasses.replace(honest_report, epsilon=claim, epsilon_budget=claim)
    result = audit_reports({"c0": [sign(report, KEYS["c0"])]}, PUBS)
    assert result.violations == []
    over = dataclasses.replace(report, epsilon_budget=claim * 0.999)
    result = audit_reports({"c0": [sign(over, KEYS["c0"])]}, PUBS)
    assert [v.kind for v in result.violations] == ["budget"]


def test_reported_budget_is_used_by_default() -> None:
    reports = make_chain("c0", KEYS["c0"], [1, 2], budget=0.5)
    result = audit_reports({"c0": reports}, PUBS)
    assert {v.kind for v in result.violations} == {"budget"}


def test_missing_round_cannot_be_audited(store) -> None:
    reports = honest()
    del reports[1]  # c0's round 2
    run_id = new_run(store, reports, PUBS)
    with pytest.raises(UsageError, match="client c0 round 4: links to round 2"):
        audit_run(run_id, store[0])


def test_missing_last_report_found_through_metrics(store) -> None:
    reports = honest()
    metrics = {"c0": {1: reports[0].report.epsilon, 4: reports[2].report.epsilon}}
    run_id = new_run(store, reports[:2] + reports[3:], PUBS, metrics)
    with pytest.raises(UsageError, match="client c0 round 4: epsilon logged as metric but no"):
        audit_run(run_id, store[0])


def test_metric_disagreeing_with_claim_is_a_violation() -> None:
    reports = make_chain("c0", KEYS["c0"], [1])
    result = audit_reports({"c0": reports}, PUBS, metrics={"c0": {1: 0.1}})
    assert [v.kind for v in result.violations] == ["metric"]


def test_missing_key_and_foreign_report() -> None:
    with pytest.raises(UsageError, match=r"client c0: no public key \(privacy/keys/c0.pub"):
        audit_reports({"c0": make_chain("c0", KEYS["c0"], [1])}, {})
    with pytest.raises(UsageError, match="holds a report of client c1"):
        audit_reports({"c0": make_chain("c1", KEYS["c1"], [1])}, PUBS)


def test_unknown_run_and_unreachable_stores(store, tmp_path, monkeypatch) -> None:
    with pytest.raises(UsageError, match="run 0123456789abcdef0123456789abcdef: not found"):
        audit_run("0123456789abcdef0123456789abcdef", store[0])
    with pytest.raises(UsageError, match="no such database file"):
        audit_run("x", f"sqlite:///{tmp_path}/absent.db")
    assert not (tmp_path / "absent.db").exists()
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(UsageError, match=f"127.0.0.1:{port}: cannot be reached"):
        audit_run("abc", f"http://127.0.0.1:{port}")


def test_run_without_reports(store) -> None:
    uri, client, exp = store
    run_id = client.create_run(exp).info.run_id
    with pytest.raises(UsageError, match="no signed privacy reports"):
        audit_run(run_id, uri)


def test_log_reports_accumulates_rounds(store) -> None:
    uri, client, exp = store
    run_id = client.create_run(exp).info.run_id
    reports = make_chain("c0", KEYS["c0"], [1, 2, 3])
    for signed in reports:  # the coordinator logs once per round
        log_reports(run_id, [signed], {"c0": PUBS["c0"]}, tracking_uri=uri)
    log_reports(run_id, [reports[1]], {"c0": PUBS["c0"]}, tracking_uri=uri)  # idempotent
    assert read_logged_reports(client, run_id, "c0") == reports
    assert audit_run(run_id, uri).ok
    with pytest.raises(UsageError, match="client c1: log_reports needs its public key"):
        log_reports(run_id, make_chain("c1", KEYS["c1"], [1]), {}, tracking_uri=uri)


def test_recomputation_agrees_between_rdp_and_pld() -> None:
    history = [(1.1, 0.05, 40), (1.3, 0.02, 100)]
    rdp, pld = rdp_epsilon(history, DELTA), pld_epsilon(history, DELTA)
    assert 0.7 * rdp < pld < rdp  # PLD is tight, RDP an upper bound
    json.dumps(history)


def test_independent_key_registry_overrides_logged_keys(store, tmp_path) -> None:
    from veilfed.privacy.reports import KeyRegistry

    run_id = new_run(store, honest(), PUBS)
    good = KeyRegistry(tmp_path / "good")
    for cid in ("c0", "c1"):
        good.register(cid, PUBS[cid])
    assert audit_run(run_id, store[0], keys_dir=good.directory).ok
    swapped = KeyRegistry(tmp_path / "swapped")
    swapped.register("c0", PUBS["c2"])
    swapped.register("c1", PUBS["c1"])
    with pytest.raises(UsageError, match="client c0 round 1: report signed with key"):
        audit_run(run_id, store[0], keys_dir=swapped.directory)
    with pytest.raises(UsageError, match="--keys .*: no such directory"):
        audit_run(run_id, store[0], keys_dir=tmp_path / "absent")


def test_rdp_recomputation_uses_the_opacus_order_grid() -> None:
    from opacus.accountants import RDPAccountant

    from veilfed.privacy.audit import RDP_ORDERS

    assert RDP_ORDERS == RDPAccountant.DEFAULT_ALPHAS
    # Small ε, where the optimal order is at the end of the grid: an honest claim still passes.
    reports = make_chain("c0", KEYS["c0"], [1, 2], sigma=5.0, rate=0.01, steps=50)
    result = audit_reports({"c0": reports}, PUBS)
    assert result.ok and result.checks[-1].claimed < 0.2
