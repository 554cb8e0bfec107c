"""The round loop end to end through the real ClientApp (in-process grid, no Ray)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message
from testkit.fed import LocalGrid, make_run, write_config

from veilfed.clients.client_app import injected_failure
from veilfed.coordinator import checkpoint
from veilfed.coordinator.rounds import Coordinator
from veilfed.data.partition import client_name


def _run(tmp_path, grid_kw=None, **cfg):
    settings, tracker = make_run(tmp_path, write_config(tmp_path, **cfg.pop("cfg", {})), **cfg)
    n = settings.federated.clients
    Coordinator(LocalGrid(n, **(grid_kw or {})), settings, tracker).run()
    return settings, tracker, checkpoint.load(settings.run_dir)


def test_rounds_log_metrics_and_cumulative_epsilon(tmp_path):
    from opacus.accountants import RDPAccountant

    settings, tracker, ckpt = _run(tmp_path, cfg={"clients": 3, "rounds": 3, "fraction": 0.67})
    assert ckpt.round == 3 and len(ckpt.history) == 3
    # every client's ε covers every round it joined: recompute from its (σ, q, total steps)
    joined = {
        c: sum(c in h["sampled"] and c not in h["failed"] for h in ckpt.history)
        for c in ckpt.clients
    }
    assert sorted(joined.values()) != [1, 1, 1]  # clients joined different numbers of rounds
    for cid, c in ckpt.clients.items():
        assert c["rounds"] == joined[cid]
        acc = RDPAccountant()
        acc.history = [(c["noise_multiplier"], c["sample_rate"], c["steps"])]
        assert c["epsilon"] == pytest.approx(acc.get_epsilon(c["delta"]), rel=1e-12)
        assert c["epsilon"] <= settings.privacy.epsilon_budget
    eps_by_round = [h["metrics"]["privacy/eps_max"] for h in ckpt.history]
    assert eps_by_round == sorted(eps_by_round) and eps_by_round[0] < eps_by_round[-1]

    run = tracker.client.get_run(tracker.run_id)
    names = set(run.data.metrics)
    for name in (
        "train/loss",
        "privacy/eps_max",
        "privacy/eps_mean",
        "round/sampled",
        "round/failed",
        "round/rejected",
        "eval/action/accuracy",
        "eval/moderation/f1",
        "baseline/moderation/f1",
        "margin/moderation/f1",
        "eval_clients/moderation/f1/mean",
        "eval_clients/moderation/f1/worst10",
        "eval_clients/moderation/f1/min",
        f"privacy/client/{client_name(0)}/eps",
    ):
        assert name in names, name
    steps = [m.step for m in tracker.client.get_metric_history(tracker.run_id, "round/sampled")]
    assert steps == [1, 2, 3]
    reports = tracker.client.list_artifacts(tracker.run_id, "privacy/reports")
    assert len(reports) == 3


def test_cumulative_epsilon_matches_google_dp_accounting(tmp_path):
    import dp_accounting

    _, _, ckpt = _run(tmp_path, cfg={"clients": 2, "rounds": 2})
    for c in ckpt.clients.values():
        event = dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(
                c["sample_rate"], dp_accounting.GaussianDpEvent(c["noise_multiplier"])
            ),
            c["steps"],
        )
        google = dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(c["delta"])
        assert c["epsilon"] == pytest.approx(google, rel=0.01)


class Killed(Exception):
    pass


def test_resume_after_kill_mid_round_equals_uninterrupted_run(tmp_path, monkeypatch):
    # Equal weights need equal DP noise in both runs: the test-only reproducible-noise switch.
    monkeypatch.setenv("VEILFED_INSECURE_NOISE_SEED", "5")
    cfg = write_config(tmp_path, clients=3, rounds=3, fraction=0.67)
    full, t_full = make_run(tmp_path, cfg, runs="a")
    Coordinator(LocalGrid(3), full, t_full).run()

    killed, t_killed = make_run(tmp_path, cfg, runs="b")
    grid = LocalGrid(3)
    grid.kill_after = 3  # round 1 trains 2 clients; die after the first client of round 2
    original = grid.send_and_receive

    def dying(messages, timeout=None):
        try:
            return original(messages, timeout)
        except KeyboardInterrupt:
            raise Killed from None

    grid.send_and_receive = dying
    with pytest.raises(Killed):
        Coordinator(grid, killed, t_killed).run()
    assert checkpoint.load(killed.run_dir).round == 1
    Coordinator(LocalGrid(3), killed, t_killed).run()  # fresh actors, same run directory

    a, b = checkpoint.load(full.run_dir), checkpoint.load(killed.run_dir)
    assert b.round == 3
    assert {c: v["epsilon"] for c, v in a.clients.items()} == {
        c: v["epsilon"] for c, v in b.clients.items()
    }
    assert {c: v["steps"] for c, v in a.clients.items()} == {
        c: v["steps"] for c, v in b.clients.items()
    }
    for key in a.arrays:
        np.testing.assert_allclose(a.arrays[key], b.arrays[key], rtol=0, atol=1e-6)


def test_nan_update_and_forged_report_are_rejected_and_the_round_goes_on(tmp_path):
    def poison(reply: Message) -> Message:
        cid = reply.content["reply"]["client-id"]
        if cid == client_name(1):  # NaN weights
            arrays = reply.content["arrays"]
            reply.content["arrays"] = ArrayRecord(
                {
                    k: Array(np.full_like(a.numpy(), np.nan)) if a.numpy().dtype.kind == "f" else a
                    for k, a in arrays.items()
                }
            )
        if cid == client_name(2):  # understates its ε after signing
            signed = json.loads(reply.content["reply"]["report"])
            signed["report"]["epsilon"] = 0.01
            reply.content["reply"]["report"] = json.dumps(signed)
        return reply

    _, _, ckpt = _run(tmp_path, grid_kw={"tamper": poison}, cfg={"clients": 4, "rounds": 1})
    h = ckpt.history[0]
    assert sorted(h["rejected"]) == [client_name(1), client_name(2)]
    assert "non-finite" in h["rejected"][client_name(1)]
    assert "signature does not match" in h["rejected"][client_name(2)]
    assert h["aggregated"] and h["metrics"]["round/accepted"] == 2
    assert h["metrics"]["round/rejected"] == 2
    assert client_name(2) not in ckpt.clients  # a forged claim is not recorded either
    assert all(np.isfinite(v).all() for v in ckpt.arrays.values() if v.dtype.kind == "f")


def test_thirty_percent_dropout_does_not_stop_rounds(tmp_path):
    settings, _, ckpt = _run(
        tmp_path, cfg={"clients": 5, "rounds": 3, "clips": 12}, overrides={"failure_rate": 0.3}
    )
    assert ckpt.round == 3
    failed_total = 0
    for h in ckpt.history:
        expected = {c for c in h["sampled"] if injected_failure(settings.seed, c, h["round"], 0.3)}
        assert set(h["failed"]) == expected
        assert h["aggregated"] == (len(h["sampled"]) - len(expected) >= 1)
        failed_total += len(expected)
    assert failed_total >= 1


def test_spent_client_declines_and_is_no_longer_sampled(tmp_path):
    # σ given; one round (2 steps at q = 0.5) costs ε ≈ 1.36, two rounds ≈ 1.92 > budget
    extra = "budget = 1.6\n"  # appended to [federated]
    cfg = write_config(tmp_path, clients=2, rounds=3, extra=extra)
    text = cfg.read_text().replace("epsilon = 8.0", "noise_multiplier = 2.0")
    cfg.write_text(text)
    settings, tracker = make_run(tmp_path, cfg)
    Coordinator(LocalGrid(2), settings, tracker).run()
    ckpt = checkpoint.load(settings.run_dir)
    assert set(ckpt.exhausted) == {client_name(0), client_name(1)}
    assert all("declining to train" in r for r in ckpt.exhausted.values())
    assert len(ckpt.clients) == 2
    assert all(1.0 < c["epsilon"] <= 1.6 and c["rounds"] == 1 for c in ckpt.clients.values())
    # round 1 trained, round 2 declined, round 3 never ran: nobody left to sample
    assert [h["round"] for h in ckpt.history] == [1, 2]
    assert set(ckpt.history[1]["declined"]) == {client_name(0), client_name(1)}
    assert math.isfinite(ckpt.history[0]["metrics"]["privacy/eps_max"])


@pytest.mark.parametrize(
    ("overrides", "central"),
    [
        ({"strategy": "fedadam", "central_dp": "adaptive", "central_noise_multiplier": 0.5}, True),
        ({"strategy": "trimmed_mean", "trim_beta": 0.2, "norm_bound": 1e6}, False),
    ],
)
def test_other_strategies_and_central_dp_run_in_the_loop(tmp_path, overrides, central):
    settings, tracker, ckpt = _run(tmp_path, cfg={"clients": 3, "rounds": 2}, overrides=overrides)
    assert [h["aggregated"] for h in ckpt.history] == [True, True]
    metrics = ckpt.history[-1]["metrics"]
    assert ("privacy/central_eps" in metrics) == central
    if central:
        first = ckpt.history[0]["metrics"]["privacy/central_eps"]
        assert 0 < first < metrics["privacy/central_eps"]
        assert ckpt.strategy[0]["clipping_norm"] != settings.federated.central_clipping_norm
    assert all(np.isfinite(v).all() for v in ckpt.arrays.values() if v.dtype.kind == "f")


class _GarbageEvalGrid(LocalGrid):
    """Clients 0-3 answer evaluation with malformed metrics, client 4 honestly; every train
    reply carries a non-numeric ``train/loss``. The coordinator must reject, never crash."""

    def send_and_receive(self, messages, timeout=None):
        from flwr.app import MetricRecord, RecordDict

        replies = super().send_and_receive(messages, timeout)
        out = []
        for reply in replies:
            cid = reply.content["reply"]["client-id"] if not reply.has_error() else None
            if reply.metadata.message_type == "train" and not reply.has_error():
                reply.content.metric_records.get("metrics")["train/loss"] = [1.0, 2.0]
            elif reply.metadata.message_type == "evaluate" and cid != client_name(4):
                garbage = {
                    client_name(0): MetricRecord({"num-examples": 3, "bogus": 1.0}),
                    client_name(1): MetricRecord({"num-examples": 3, "eval/action": 0.5}),
                    client_name(2): MetricRecord({"num-examples": 3, "eval/action/acc": math.nan}),
                    client_name(3): MetricRecord({"eval/action/accuracy": 0.5}),
                }[cid]
                info = reply.content["reply"]
                reply = Message(RecordDict({"metrics": garbage, "reply": info}), reply_to=reply)
            out.append(reply)
        return out


def test_malformed_evaluate_replies_are_rejected_not_fatal(tmp_path):
    settings, tracker = make_run(tmp_path, write_config(tmp_path, clients=5, rounds=1, clips=15))
    Coordinator(_GarbageEvalGrid(5), settings, tracker).run()
    h = checkpoint.load(settings.run_dir).history[0]
    assert h["aggregated"] and math.isnan(h["metrics"]["train/loss"])  # no numeric loss
    evals = {k for k in h["metrics"] if k.startswith("eval/")}
    assert evals and all(k.count("/") == 2 for k in evals)  # the honest client's only
    assert "eval/action/acc" not in evals and "bogus" not in h["metrics"]


def test_a_signed_report_with_a_huge_renyi_order_is_refused_in_the_round(tmp_path):
    """A client signs, with its own key, a report declaring the order 10^9 (which would stall an
    audit's recomputation): the coordinator refuses the update and the round goes on."""
    from veilfed.clients.node_state import NodeState
    from veilfed.privacy.report_schema import PrivacyReport, SignedReport
    from veilfed.privacy.report_signing import sign

    settings, tracker = make_run(tmp_path, write_config(tmp_path, clients=3, rounds=1))

    def huge_order(reply: Message) -> Message:
        cid = reply.content["reply"]["client-id"]
        if cid == client_name(1):
            signed = SignedReport.from_json(reply.content["reply"]["report"])
            data = dict(signed.report.__dict__, orders=[1e9])
            key = NodeState.in_run(settings.run_dir, cid).signing_key()
            forged = sign(PrivacyReport(**data), key)
            reply.content["reply"]["report"] = forged.to_json()
        return reply

    Coordinator(LocalGrid(3, tamper=huge_order), settings, tracker).run()
    h = checkpoint.load(settings.run_dir).history[0]
    assert list(h["rejected"]) == [client_name(1)]
    assert "each order must be in (1, 256]" in h["rejected"][client_name(1)]
    assert h["aggregated"] and h["metrics"]["round/accepted"] == 2
