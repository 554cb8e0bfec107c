"""The coordinator's side of baselines: evaluate replies may carry ``baseline/`` numbers, a round
logs baselines, margins, client-bootstrap intervals and the spread across clients, and the
summary rebuilds ``baselines``/``margins``/``primary``/``clients_spread`` from the last round."""

from __future__ import annotations

import pytest
from flwr.app import Message, MetricRecord, RecordDict

from veilfed.coordinator.evaluation import Evaluation, eval_metrics, round_scores
from veilfed.coordinator.round_record import RoundLog
from veilfed.coordinator.summary import scores_of


def _reply(metrics: dict[str, float]) -> Message:
    return Message(
        RecordDict({"metrics": MetricRecord(metrics)}), dst_node_id=1, message_type="evaluate"
    )


def test_a_reply_may_carry_baselines_beside_eval_metrics() -> None:
    ok = eval_metrics(
        _reply({"num-examples": 4, "eval/qa/accuracy": 0.5, "baseline/qa/accuracy": 0.4})
    )
    assert ok == (4.0, {"eval/qa/accuracy": 0.5, "baseline/qa/accuracy": 0.4})
    assert "unexpected metric 'baseline/qa'" in eval_metrics(
        _reply({"num-examples": 4, "baseline/qa": 0.4})
    )
    assert "unexpected metric 'margin/qa/accuracy'" in eval_metrics(
        _reply({"num-examples": 4, "margin/qa/accuracy": 0.1})
    )


RESULTS = [
    (10.0, {"eval/action/accuracy": 0.9, "baseline/action/accuracy": 0.3, "eval/action/f1": 0.8,
            "baseline/action/f1": 0.1}),
    (30.0, {"eval/action/accuracy": 0.5, "baseline/action/accuracy": 0.3, "eval/action/f1": 0.4,
            "baseline/action/f1": 0.1}),
    (20.0, {"eval/action/accuracy": 0.7, "baseline/action/accuracy": 0.2, "eval/action/f1": 0.6,
            "baseline/action/f1": 0.1}),
    (40.0, {"eval/quality/mae": 0.2, "baseline/quality/mae": 0.25, "eval/quality/spearman": 0.5,
            "baseline/quality/spearman": 0.0}),
]  # fmt: skip


def test_round_scores_weigh_baselines_like_eval_and_show_the_spread() -> None:
    out = round_scores(RESULTS, seed=1)
    assert out["baseline/action/accuracy"] == pytest.approx((3 + 9 + 4) / 60)
    assert out["margin/action/accuracy"] == pytest.approx((9 + 15 + 14) / 60 - 16 / 60)
    assert out["baseline/action/f1"] == pytest.approx(0.1)
    # spread of the primary metric over clients: unweighted, worst 10 % = the worst client
    assert out["eval_clients/action/accuracy/mean"] == pytest.approx(0.7)
    assert out["eval_clients/action/accuracy/worst10"] == pytest.approx(0.5)
    assert out["eval_clients/action/accuracy/min"] == pytest.approx(0.5)
    assert "eval_clients/action/f1/mean" not in out  # primary metrics only
    lo, hi = out["eval_ci95/action/accuracy/lo"], out["eval_ci95/action/accuracy/hi"]
    assert 0.5 <= lo <= (9 + 15 + 14) / 60 <= hi <= 0.9
    assert out["margin_ci95/action/accuracy/lo"] > 0
    # quality: one client, no interval; the primary (spearman) has its spread
    assert "eval_ci95/quality/spearman/lo" not in out
    assert out["eval_clients/quality/spearman/worst10"] == 0.5


def test_worst_ten_percent_follows_the_metric_direction() -> None:
    from veilfed.coordinator.evaluation import client_spread

    values = [float(v) for v in range(20)]
    assert client_spread("t/m", values, True)["eval_clients/t/m/worst10"] == 0.5  # 0 and 1
    assert client_spread("t/m", values, False)["eval_clients/t/m/worst10"] == 18.5


def test_the_round_log_and_the_summary_carry_the_scores() -> None:
    rlog = RoundLog(round=3)
    Evaluation(results=RESULTS).into(rlog)
    assert rlog.eval["action"]["accuracy"] == pytest.approx(38 / 60)
    assert "baseline" not in rlog.eval and set(rlog.eval) == {"action", "quality"}
    metrics = rlog.metrics({}, None)
    assert metrics["baseline/action/accuracy"] == pytest.approx(16 / 60)
    summary = scores_of(metrics)
    assert summary["metrics"] == rlog.eval
    assert summary["baselines"]["quality"] == {"mae": 0.25, "spearman": 0.0}
    assert summary["primary"] == {"action": "accuracy", "quality": "spearman"}
    acc = summary["margins"]["action"]["accuracy"]
    assert acc["margin"] == pytest.approx(22 / 60) and acc["higher_is_better"] is True
    assert acc["ci95"] == [metrics["eval_ci95/action/accuracy/lo"],
                           metrics["eval_ci95/action/accuracy/hi"]]  # fmt: skip
    assert acc["margin_ci95"][0] == metrics["margin_ci95/action/accuracy/lo"]
    assert summary["margins"]["action"]["f1"]["ci95"] is None
    assert summary["margins"]["quality"]["mae"]["higher_is_better"] is False
    assert summary["clients_spread"]["action"]["accuracy"]["min"] == pytest.approx(0.5)
