"""ε audit of real MLflow runs: honest runs pass; every way of fooling it is caught.

Each attack is built from real parts: real Opacus accountants, real Ed25519 signatures, the
coordinator's real round-log writer, a real MLflow store.
"""

from __future__ import annotations

import dataclasses
import time
import tracemalloc

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mlflow.tracking import MlflowClient
from testkit.privacy import (
    DELTA,
    counted_by_round,
    digest,
    make_chain,
    publish,
    write_round_log,
)

from veilfed.errors import UsageError
from veilfed.privacy.audit import audit_reports
from veilfed.privacy.audit_accountant import RDP_REL_SLACK, rdp_epsilon
from veilfed.privacy.audit_load import MLFLOW_KEYS_WARNING, audit_run
from veilfed.privacy.audit_log import read_round_log
from veilfed.privacy.audit_render import plot_png, render_html, render_markdown
from veilfed.privacy.orders import rdp_orders
from veilfed.privacy.report_signing import sign
from veilfed.privacy.signing import public_pem

KEYS = {cid: Ed25519PrivateKey.generate() for cid in ("c0", "c1", "c2")}
PUBS = {cid: k.public_key() for cid, k in KEYS.items()}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, MlflowClient, str]:
    """One SQLite store per module (creating its schema takes seconds)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("audit", artifact_location=(root / "artifacts").as_uri())
    return uri, client, exp


def new_run_id(store) -> str:
    _, client, exp = store
    return client.create_run(exp).info.run_id


def keys_dir(writer, pubs=PUBS):
    """The coordinator's ``<run_dir>/keys``: its own key and the clients' registered keys."""
    for cid, key in pubs.items():
        (writer.run_dir / "keys" / f"{cid}.pub").write_bytes(public_pem(key))
    return writer.run_dir / "keys"


def honest(run_id: str) -> list:
    return make_chain("c0", KEYS["c0"], [1, 2, 4], run_id=run_id) + make_chain(
        "c1", KEYS["c1"], [1, 3], sigma=1.2, rate=0.08, steps=10, run_id=run_id
    )


def audit_offline(reports, writer, run_id, **kw):
    """The audit's rules on a verified round log, without MLflow."""
    by_client: dict[str, list] = {}
    for s in reports:
        by_client.setdefault(s.report.client_id, []).append(s)
    entries = read_round_log(writer.path.read_text(), writer.key.public_key(), run_id)
    return audit_reports(by_client, PUBS, entries, run_id=run_id, **kw)


def test_honest_run_verifies_with_the_auditors_keys(store, tmp_path) -> None:
    uri, client, _ = store
    run_id = new_run_id(store)
    reports = honest(run_id)
    writer = write_round_log(tmp_path, run_id, counted_by_round(reports), KEYS)
    publish(client, uri, run_id, reports, PUBS, writer)
    for cid, value in {r.report.round: r.report.epsilon for r in reports[:3]}.items():
        client.log_metric(run_id, "privacy/client/c0/eps", value, step=cid)
    result = audit_run(run_id, uri, keys_dir=keys_dir(writer))
    assert result.ok, [str(v) for v in result.violations]
    assert result.warnings == [] and result.budget == 10.0 and result.delta == DELTA
    assert [(c.client_id, c.round) for c in result.checks] == [
        ("c0", 1),
        ("c0", 2),
        ("c0", 4),
        ("c1", 1),
        ("c1", 3),
    ]
    last = result.checks[2]
    assert last.steps_total == 60
    assert last.claimed == pytest.approx(last.recomputed, rel=1e-12)
    assert last.recomputed == pytest.approx(
        rdp_epsilon([(1.1, 0.05, 60)], DELTA, rdp_orders("rdp")), rel=1e-12
    )
    data = result.to_dict()
    assert data["ok"] is True and data["clients"]["c1"]["rounds"] == [1, 3]
    assert data["budget_source"] == "signed settings"
    png = plot_png(result)
    assert png.startswith(b"\x89PNG")
    md = render_markdown(result, "eps.png")
    assert "Privacy audit — OK" in md and "![cumulative ε by round](eps.png)" in md
    assert "| c1 | 3 | 20 |" in md
    page = render_html(result, png)
    assert "data:image/png;base64," in page and "<table>" in page


def test_keys_only_from_mlflow_are_used_with_a_warning(store, tmp_path) -> None:
    uri, client, _ = store
    run_id = new_run_id(store)
    reports = honest(run_id)
    writer = write_round_log(tmp_path, run_id, counted_by_round(reports), KEYS)
    publish(client, uri, run_id, reports, PUBS, writer)
    result = audit_run(run_id, uri)
    assert result.ok and result.warnings == [MLFLOW_KEYS_WARNING]
    assert "warning: public keys taken from the run's own MLflow" in render_markdown(result)


def test_keys_dir_without_the_coordinator_key_cannot_audit(store, tmp_path) -> None:
    uri, client, _ = store
    run_id = new_run_id(store)
    reports = honest(run_id)
    writer = write_round_log(tmp_path, run_id, counted_by_round(reports), KEYS)
    publish(client, uri, run_id, reports, PUBS, writer)
    (writer.run_dir / "keys" / "coordinator.pem").unlink()
    with pytest.raises(UsageError, match="no coordinator.pem"):
        audit_run(run_id, uri, keys_dir=writer.run_dir / "keys")


@pytest.mark.parametrize("sigma", [0.5, 0.6, 0.8])
def test_honest_opacus_chains_at_small_sigma_verify(tmp_path, sigma) -> None:
    """Opacus and dp-accounting differ by up to 5 % here; the audit recomputes Opacus' bound on
    the declared orders, so an honest claim verifies exactly."""
    reports = make_chain("c0", KEYS["c0"], [1, 2, 3, 4, 5, 6], sigma=sigma, rate=0.25, steps=20)
    writer = write_round_log(tmp_path, "run-a", counted_by_round(reports), KEYS, budget=1e4)
    result = audit_offline(reports, writer, "run-a")
    assert result.ok, [str(v) for v in result.violations]
    for check in result.checks:
        assert abs(check.rel_diff) < 1e-10


def test_one_percent_under_claim_is_a_violation(tmp_path) -> None:
    reports = make_chain("c0", KEYS["c0"], [1, 2, 3], sigma=0.8, rate=0.25, steps=20)
    low = dataclasses.replace(reports[2].report, epsilon=reports[2].report.epsilon * 0.99)
    reports[2] = sign(low, KEYS["c0"])
    writer = write_round_log(tmp_path, "run-a", counted_by_round(reports), KEYS, budget=1e4)
    result = audit_offline(reports, writer, "run-a")
    assert [(v.round, v.kind) for v in result.violations] == [(3, "mismatch")]
    assert "under-claim" in str(result.violations[0])
    over = dataclasses.replace(reports[2].report, epsilon=low.epsilon * 1.5)
    reports[2] = sign(over, KEYS["c0"])
    assert audit_offline(reports, writer, "run-a").ok  # over-claiming is fine


def test_budget_is_checked_against_the_recomputation_not_only_the_claim(tmp_path) -> None:
    reports = make_chain("c0", KEYS["c0"], [1, 2], sigma=1.1, rate=0.05, steps=20)
    true = reports[1].report.epsilon
    low = dataclasses.replace(reports[1].report, epsilon=true * 0.9)
    reports[1] = sign(low, KEYS["c0"])
    writer = write_round_log(tmp_path, "run-a", counted_by_round(reports), KEYS, budget=true * 0.95)
    kinds = {v.kind for v in audit_offline(reports, writer, "run-a").violations}
    assert kinds == {"mismatch", "budget"}


def test_honest_claim_at_exactly_the_budget_passes(tmp_path) -> None:
    """A client that stops exactly at its budget (Opacus' ε == budget) is within it, though the
    recomputation may differ from the claim in its last bits."""
    reports = make_chain("c0", KEYS["c0"], [1, 2, 3], sigma=0.7, rate=0.25, steps=20)
    at = reports[-1].report.epsilon
    writer = write_round_log(tmp_path, "run-a", counted_by_round(reports), KEYS, budget=at)
    assert audit_offline(reports, writer, "run-a").ok
    tighter = write_round_log(
        tmp_path / "t", "run-a", counted_by_round(reports), KEYS, budget=at * 0.999
    )
    result = audit_offline(reports, tighter, "run-a")
    assert [(v.round, v.kind) for v in result.violations] == [(3, "budget")]


def test_null_budget_in_reports_is_still_checked_against_the_signed_settings(tmp_path) -> None:
    reports = make_chain("c0", KEYS["c0"], [1, 2, 3, 4], sigma=0.8, rate=0.25, budget=None)
    assert all(s.report.epsilon_budget is None for s in reports)
    writer = write_round_log(tmp_path, "run-a", counted_by_round(reports), KEYS, budget=16.0)
    result = audit_offline(reports, writer, "run-a")
    assert "budget" in {v.kind for v in result.violations}
    # Neither the settings nor the auditor pin a budget: the audit refuses to guess.
    counted = counted_by_round(reports)
    unpinned = write_round_log(tmp_path / "b", "run-a", counted, KEYS, budget=None)
    with pytest.raises(UsageError, match="pin no finite epsilon budget; pass --budget"):
        audit_offline(reports, unpinned, "run-a")
    assert audit_offline(reports, unpinned, "run-a", budget=1e4).ok


def test_cut_chain_tail_fails_without_any_metrics(store, tmp_path) -> None:
    uri, client, _ = store
    run_id = new_run_id(store)
    full = make_chain("c0", KEYS["c0"], [1, 2, 3, 4, 5, 6], sigma=0.8, rate=0.25, run_id=run_id)
    budget = (full[1].report.epsilon + full[-1].report.epsilon) / 2  # the kept prefix is within
    writer = write_round_log(tmp_path, run_id, counted_by_round(full), KEYS, budget=budget)
    publish(client, uri, run_id, full[:2], PUBS, writer)  # rounds 3-6 cut, no metrics logged
    result = audit_run(run_id, uri, keys_dir=keys_dir(writer))
    assert not result.ok
    assert {(v.round, v.kind) for v in result.violations} == {(r, "binding") for r in range(3, 7)}
    assert "no signed report for it" in str(result.violations[0])


def test_cut_round_log_tail_cannot_be_audited(tmp_path) -> None:
    reports = make_chain("c0", KEYS["c0"], [1, 2], run_id="run-a")
    writer = write_round_log(tmp_path, "run-a", counted_by_round(reports), KEYS, close=False)
    with pytest.raises(UsageError, match="no closing entry"):
        audit_offline(reports, writer, "run-a")


def test_chain_copied_from_another_run_fails(store, tmp_path) -> None:
    uri, client, _ = store
    run_a, run_b = new_run_id(store), new_run_id(store)
    copied = make_chain("c0", KEYS["c0"], [1, 2], run_id=run_a)
    writer = write_round_log(tmp_path, run_b, counted_by_round(copied), KEYS)
    publish(client, uri, run_b, copied, PUBS, writer)
    result = audit_run(run_b, uri, keys_dir=keys_dir(writer))
    assert {v.kind for v in result.violations} == {"binding"}
    assert any(f"report is of run {run_a}" in str(v) for v in result.violations)


def test_round_log_copied_from_another_run_cannot_be_audited(tmp_path) -> None:
    reports = make_chain("c0", KEYS["c0"], [1, 2], run_id="run-b")
    writer = write_round_log(tmp_path, "run-a", counted_by_round(reports), KEYS)
    with pytest.raises(UsageError, match="round log is of run run-a, not run-b"):
        audit_offline(reports, writer, "run-b")


def test_report_for_another_model_fails(tmp_path) -> None:
    reports = make_chain("c0", KEYS["c0"], [1, 2], run_id="run-a")
    other = dataclasses.replace(reports[1].report, model_digest=digest("elsewhere", 2))
    reports[1] = sign(other, KEYS["c0"])
    writer = write_round_log(tmp_path, "run-a", counted_by_round(reports), KEYS)
    result = audit_offline(reports, writer, "run-a")
    assert [(v.round, v.kind) for v in result.violations] == [(2, "binding")]
    assert "round log's round started from" in str(result.violations[0])


def test_edited_round_log_cannot_be_audited(tmp_path) -> None:
    reports = make_chain("c0", KEYS["c0"], [1, 2], run_id="run-a")
    writer = write_round_log(tmp_path, "run-a", counted_by_round(reports), KEYS)
    text = writer.path.read_text()
    assert '"epsilon_budget":10.0' in text
    writer.path.write_text(text.replace('"epsilon_budget":10.0', '"epsilon_budget":99.0'))
    with pytest.raises(UsageError, match="signature does not match the coordinator key"):
        audit_offline(reports, writer, "run-a")


def test_delta_rules(tmp_path) -> None:
    reports = make_chain("c0", KEYS["c0"], [1, 2], run_id="run-a", delta=1e-3)
    writer = write_round_log(tmp_path, "run-a", counted_by_round(reports), KEYS, delta=1e-3, n=5000)
    result = audit_offline(reports, writer, "run-a", budget=1e4)
    assert {v.kind for v in result.violations} == {"delta"}
    assert "> 1/n" in str(result.violations[0])
    mixed = make_chain("c0", KEYS["c0"], [1], run_id="run-a")
    acc_reports = mixed + [
        sign(
            dataclasses.replace(
                make_chain("c0", KEYS["c0"], [1, 2], run_id="run-a", delta=2e-5)[1].report
            ),
            KEYS["c0"],
        )
    ]
    writer = write_round_log(tmp_path / "m", "run-a", counted_by_round(acc_reports), KEYS)
    with pytest.raises(UsageError, match="prev_hash does not match"):
        audit_offline(acc_reports, writer, "run-a")
    with pytest.raises(UsageError, match=r"--delta must be in \(0, 1\)"):
        audit_offline(reports, writer, "run-a", delta=0.0)


def _signed_with(report, **changes):
    """A report with ``changes``, validly signed (the signer is the attacker)."""
    rep = dataclasses.replace(report, **changes)
    return sign(rep, KEYS["c0"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"delta": 0.0}, "field 'delta' must be in (0, 1)"),
        ({"noise_multiplier": -1.0}, "field 'noise_multiplier' must be > 0"),
        ({"sample_rate": 2.0}, "field 'sample_rate' must be in (0, 1]"),
        ({"steps_round": 10**12, "steps_total": 10**12}, "must be in [1, 1000000000]"),
        ({"orders": (0.5, 2.0)}, "each order must be in (1, 256]"),
    ],
)
def test_malformed_signed_reports_cannot_be_audited(store, tmp_path, changes, message) -> None:
    uri, client, _ = store
    run_id = new_run_id(store)
    reports = make_chain("c0", KEYS["c0"], [1, 2], run_id=run_id)
    reports[1] = _signed_with(reports[1].report, **changes)
    writer = write_round_log(tmp_path, run_id, counted_by_round(reports), KEYS)
    uri, client, _ = store
    client.log_text(
        run_id, "".join(s.to_json() + "\n" for s in reports), "privacy/reports/c0.jsonl"
    )
    publish(client, uri, run_id, [], PUBS, writer)
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(UsageError) as err:
        audit_run(run_id, uri, keys_dir=keys_dir(writer))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert message in str(err.value) and "\n" not in str(err.value)
    assert time.perf_counter() - start < 30 and peak < 200 * 2**20


def test_a_billion_steps_compose_analytically() -> None:
    tracemalloc.start()
    start = time.perf_counter()
    eps = rdp_epsilon([(1.0, 0.05, 10**9)], DELTA, rdp_orders("rdp"))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert eps > 1000 and time.perf_counter() - start < 5 and peak < 50 * 2**20


def test_prv_claims_are_checked_against_pld(tmp_path) -> None:
    reports = make_chain("c2", KEYS["c2"], [1], sigma=1.0, rate=0.05, steps=100, accountant="prv")
    writer = write_round_log(tmp_path, "run-a", counted_by_round(reports), KEYS, budget=1e4)
    result = audit_offline(reports, writer, "run-a")
    assert result.ok, [str(v) for v in result.violations]
    assert result.checks[0].claimed == pytest.approx(result.checks[0].recomputed, rel=0.01)
    low = dataclasses.replace(reports[0].report, epsilon=result.checks[0].recomputed * 0.9)
    bad = audit_offline([sign(low, KEYS["c2"])], writer, "run-a")
    assert [v.kind for v in bad.violations] == ["mismatch"]


def test_changes_after_signing_cannot_be_audited(tmp_path) -> None:
    reports = make_chain("c0", KEYS["c0"], [1, 2], run_id="run-a")
    writer = write_round_log(tmp_path, "run-a", counted_by_round(reports), KEYS)
    for changes in ({"epsilon": 0.5}, {"noise_multiplier": 3.0}, {"run_id": "run-b"}):
        forged = dataclasses.replace(
            reports[1], report=dataclasses.replace(reports[1].report, **changes)
        )
        with pytest.raises(UsageError, match="client c0 round 2: signature does not match"):
            audit_offline([reports[0], forged], writer, "run-a")


def test_missing_middle_report_cannot_be_audited(tmp_path) -> None:
    reports = make_chain("c0", KEYS["c0"], [1, 2, 3], run_id="run-a")
    writer = write_round_log(tmp_path, "run-a", counted_by_round(reports), KEYS)
    with pytest.raises(UsageError, match="links to round 2"):
        audit_offline([reports[0], reports[2]], writer, "run-a")


def test_rdp_slack_is_rounding_only() -> None:
    assert RDP_REL_SLACK <= 1e-9


def test_unknown_run_and_missing_store(store, tmp_path) -> None:
    with pytest.raises(UsageError, match="not found"):
        audit_run("0" * 32, store[0])
    with pytest.raises(UsageError, match="no such database file"):
        audit_run("x", f"sqlite:///{tmp_path}/none.db")


def test_run_without_round_log_cannot_be_audited(store) -> None:
    from veilfed.privacy.report_store import log_reports

    uri, _, _ = store
    run_id = new_run_id(store)
    log_reports(run_id, honest(run_id), PUBS, tracking_uri=uri)
    with pytest.raises(UsageError, match="no signed round log"):
        audit_run(run_id, uri)


# -- the coordinator's side, through the real round loop and the real ClientApp ------------------
def _coordinator_run(tmp_path, tamper=None, he: bool = False):

    from testkit.fed import LocalGrid, make_run, write_config

    from veilfed.coordinator import checkpoint
    from veilfed.coordinator.prepare import prepare
    from veilfed.coordinator.rounds import Coordinator

    cfg = write_config(tmp_path, clients=3, rounds=2, fraction=1.0)
    if he:
        settings, tracker = prepare(cfg, {}, None, None, None, None, tmp_path / "runs", he=True)
    else:
        settings, tracker = make_run(tmp_path, cfg)
    Coordinator(LocalGrid(3, tamper=tamper), settings, tracker).run()
    return settings, tracker, checkpoint.load(settings.run_dir)


@pytest.mark.parametrize("he", [False, True], ids=["plaintext", "he"])
def test_a_real_run_audits_with_the_coordinators_keys(tmp_path, he) -> None:
    """Under HE the model digest is over the encrypted aggregate both sides hold."""
    from pathlib import Path

    settings, tracker, ckpt = _coordinator_run(tmp_path, he=he)
    assert all(h["aggregated"] for h in ckpt.history)
    keys = Path(settings.run_dir) / "keys"
    assert (keys / "coordinator.pem").is_file()
    result = audit_run(settings.run_id, tracker.tracking_uri, keys_dir=keys)
    assert result.ok, [str(v) for v in result.violations]
    assert result.budget_source == "signed settings"
    assert len(result.checks) == sum(len(h["sampled"]) for h in ckpt.history) == 6


def test_coordinator_rejects_reports_bound_to_another_run_model_or_delta(tmp_path) -> None:
    """A client (holding its own signing key) signs reports that name another run, another
    model or another δ: each is refused in the round, which goes on."""
    import json
    from pathlib import Path

    from veilfed.clients.node_state import NodeState
    from veilfed.data.partition import client_name
    from veilfed.privacy.report_schema import PrivacyReport, SignedReport

    forged = {
        client_name(0): {"run_id": "another-run"},
        client_name(1): {"model_digest": digest("elsewhere", 1)},
        client_name(2): {"delta": 2e-5},
    }
    run_dirs: list[str] = []

    def forge(reply):
        cid = reply.content["reply"]["client-id"]
        raw = reply.content["reply"].get("report")
        if raw is None:
            return reply
        signed = SignedReport.from_json(raw)
        rep = PrivacyReport.from_dict({**dataclasses.asdict(signed.report), **forged[cid]})
        key = NodeState.in_run(run_dirs[0], cid).signing_key()
        reply.content["reply"]["report"] = sign(rep, key).to_json()
        return reply

    import veilfed.coordinator.rounds as rounds

    original = rounds.Coordinator.__init__

    def remember(self, grid, settings, *a, **k):
        run_dirs.append(settings.run_dir)
        original(self, grid, settings, *a, **k)

    rounds.Coordinator.__init__ = remember
    try:
        _, _, ckpt = _coordinator_run(tmp_path, tamper=forge)
    finally:
        rounds.Coordinator.__init__ = original
    rejected = ckpt.history[0]["rejected"]
    assert "report is for run another-run" in rejected[client_name(0)]
    assert "names another global model" in rejected[client_name(1)]
    assert "is not the run's" in rejected[client_name(2)]
    assert (
        json.loads((Path(run_dirs[0]) / "round-log.jsonl").read_text().splitlines()[1])["entry"][
            "reported"
        ]
        == []
    )


_RND = {"model_digest": "0" * 64, "sampled": [], "reported": [], "accepted": []}


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            [{"kind": "round", "round": 2, **_RND}, {"kind": "round", "round": 2, **_RND}],
            "round 2 after round 2; rounds must ascend",
        ),
        (
            [{"kind": "round", "round": 3, **_RND}, {"kind": "round", "round": 1, **_RND}],
            "round 1 after round 3",
        ),
        ([{"kind": "settings", "delta": 1e-5}], "a second settings entry"),
        ([{"kind": "release", "round": 1}], "entry kind 'release' is not settings"),
        ([{"kind": "end", "rounds": 1}], "entry after the closing entry"),
        ([{"kind": "round", "round": True, **_RND}], "field 'round' must be an integer >= 1"),
        ([{"kind": "round", "round": 1, **_RND, "aggregated": "yes"}], "'aggregated' must be"),
    ],
)
def test_malformed_signed_round_log_is_one_line_usage_error(tmp_path, entries, message) -> None:
    """Signed by the real coordinator key, but not a log the audit can read: exit 2, one line."""
    from veilfed.privacy.audit_log import RoundLogWriter

    writer = RoundLogWriter(tmp_path, "run-a")
    settings = {"kind": "settings", "delta": 1e-5, "epsilon_budget": 8.0, "clients": {}}
    writer._write([settings, *entries, {"kind": "end", "rounds": 1}])
    with pytest.raises(UsageError, match="round_log.jsonl line") as err:
        read_round_log(writer.path.read_text(), writer.key.public_key(), "run-a")
    assert message in str(err.value) and "\n" not in str(err.value)
