"""One end-to-end simulation through Flower's simulation engine on Ray (small and slow)."""

from __future__ import annotations

import json

import pytest
from testkit.fed import write_config
from typer.testing import CliRunner

from veilfed.cli.main import app


@pytest.mark.integration
def test_simulation_on_ray_writes_summary_and_mlflow_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from opacus.accountants import RDPAccountant

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = write_config(tmp_path, clients=3, rounds=2, fraction=0.67)
    summary_path = tmp_path / "summary.json"
    result = CliRunner().invoke(
        app, ["simulate", "--config", str(cfg), "--summary-json", str(summary_path)]
    )
    assert result.exit_code == 0, result.output
    assert "per-client privacy" in result.output and "mlflow ui" in result.output
    summary = json.loads(summary_path.read_text())
    assert {"run_id", "tracking_uri", "rounds", "wall_s", "metrics", "clients", "he"} <= set(
        summary
    )
    assert summary["rounds"] == 2 and {"action", "moderation"} <= set(summary["metrics"])
    assert {"action", "moderation"} <= set(summary["baselines"]) and summary["margins"]["action"]
    assert "margin 95% CI" in result.output and "baseline" in result.output
    assert summary["clients"], "some client trained"
    for c in summary["clients"].values():
        acc = RDPAccountant()
        acc.history = [(c["noise_multiplier"], c["sample_rate"], c["steps"])]
        assert c["epsilon"] == pytest.approx(acc.get_epsilon(c["delta"]), rel=1e-9)
    run = MlflowClient(tracking_uri=summary["tracking_uri"]).get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert "privacy/eps_max" in run.data.metrics and "eval/action/accuracy" in run.data.metrics
    # the run left its final and best global model in MLflow, and they load back
    import numpy as np

    from veilfed.coordinator import checkpoint
    from veilfed.model import load, numpy_state

    model = summary["model"]
    assert model["encrypted"] is False and model["best_round"] in (1, 2)
    assert f"final model: {model['final']}" in result.output
    final = numpy_state(load(model["final"]))
    for k, v in checkpoint.load(summary["run_dir"]).arrays.items():
        np.testing.assert_array_equal(final[k], v)
    assert set(numpy_state(load(model["best"]))) == set(final)
    # Training wrote a store, run state, checkpoints, MLflow rows and artifacts: no MP4 box and no
    # raw frames in any of them (video is plaintext only in client memory).
    from veilfed.data.scan import scan

    assert scan([tmp_path]) == []
