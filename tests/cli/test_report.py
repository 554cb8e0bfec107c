"""The per-task table of train and simulate: primary metric beside its baseline, with a verdict
only where the margin's interval clears 0."""

from __future__ import annotations

from veilfed.cli.report import report_lines, score_rows, verdict


def _entry(margin: float, ci: list[float] | None, higher: bool = True) -> dict:  # type: ignore[type-arg]
    return {"value": 0.5 + margin, "baseline": 0.5, "margin": margin, "higher_is_better": higher,
            "ci95": None, "margin_ci95": ci}  # fmt: skip


def test_verdict_needs_the_interval_to_clear_zero() -> None:
    assert verdict(_entry(0.2, [0.1, 0.3])) == "above"
    assert verdict(_entry(-0.2, [-0.3, -0.1])) == "below"
    assert verdict(_entry(0.1, [-0.05, 0.2])) == "within"
    assert verdict(_entry(0.1, None)) == "no CI"
    assert verdict(_entry(-0.1, [-0.2, -0.05], higher=False)) == "above"  # e.g. mae went down


def _summary() -> dict:  # type: ignore[type-arg]
    return {
        "run_id": "r1", "rounds": 2, "wall_s": 3.0, "strategy": "fedavg", "private": False,
        "metrics": {"action": {"accuracy": 0.7, "f1": 0.6}, "pose": {"pck_0.1": 0.4}},
        "baselines": {"action": {"accuracy": 0.2, "f1": 0.1}},
        "margins": {"action": {"accuracy": _entry(0.5, [0.3, 0.6])}},
        "primary": {"action": "accuracy", "pose": "pck_0.1"},
        "clients_spread": {"action": {"accuracy": {"mean": 0.68, "worst10": 0.5, "min": 0.5}}},
        "clients": {}, "exhausted": {}, "he": {"enabled": False}, "tracking_uri": "sqlite:///x",
        "run_dir": "runs/r1",
    }  # fmt: skip


def test_rows_and_report_lines() -> None:
    rows = score_rows(_summary())
    assert rows[0] == ("action", "accuracy", "1.0000", "0.5000", "+0.5000", "[+0.300, +0.600]",
                       "above")  # fmt: skip
    assert rows[1] == ("pose", "pck_0.1", "0.4000", "-", "-", "-", "n/a")  # no baseline
    text = "\n".join(report_lines(_summary()))
    assert "margin 95% CI" in text and "[+0.300, +0.600]" in text
    assert "action        accuracy: mean 0.6800, worst 10% 0.5000, min 0.5000" in text
    assert "update compression" not in text
    comm = {"update_compression": "topk", "update_bytes": 2210.4, "dense_bytes": 1e4,
            "ratio": 0.221}  # fmt: skip
    text = "\n".join(report_lines({**_summary(), "comm": comm}))
    assert "update compression topk: 2210 bytes per client update (0.221x the whole model)" in text
