from __future__ import annotations

import math

import pytest

from veilfed import tracking
from veilfed.errors import UsageError


@pytest.fixture(autouse=True)
def _store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)


def test_default_store_is_sqlite_in_cwd(tmp_path, monkeypatch):
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


def test_run_params_metrics_artifacts_and_finish(tmp_path):
    t = tracking.start_run("exp", {"model": {"dim": 8}, "tasks": "a,b", "eps": math.inf})
    t.log_metrics({"train/loss": 1.5, "eval/a/acc": 0.5, "skipped": math.nan}, step=2)
    t.log_json({"ok": 1}, "summary.json")
    t.finish()
    run = t.client.get_run(t.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.dim"] == "8" and run.data.params["eps"] == "Infinity"
    assert run.data.metrics == {"train/loss": 1.5, "eval/a/acc": 0.5}
    assert [a.path for a in t.client.list_artifacts(t.run_id)] == ["summary.json"]
    assert (tmp_path / "mlflow.db").exists() and (tmp_path / "mlartifacts").is_dir()


def test_error_marks_run_failed_and_resume_reopens_it():
    t = tracking.start_run("exp")
    with pytest.raises(RuntimeError), t.failing_on_error():
        raise RuntimeError("boom")
    assert t.status() == "FAILED"
    again = tracking.resume_run(t.run_id)
    assert again.status() == "RUNNING"
    with pytest.raises(UsageError, match="no such MLflow run"):
        tracking.resume_run("0" * 32)


def test_flatten_caps_long_values():
    flat = tracking.flatten({"a": {"b": "x" * 10_000}})
    assert len(flat["a.b"]) == 6000
