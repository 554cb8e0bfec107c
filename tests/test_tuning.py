"""`veilfed tune`: Optuna trials as MLflow child runs, the best config written out, public data
only, the search space honouring DP."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from veilfed.cli.main import app
from veilfed.config import load_config
from veilfed.tuning import direction, suggest

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.toml"


def small_config(tmp_path: Path, private: bool) -> Path:
    text = TINY.read_text()
    start, end = text.index("[model.tasks]"), text.index("[train]")
    text = text[:start] + "[model.tasks]\naction = 1.0\nmoderation = 1.0\n\n" + text[end:]
    text = text.replace("dim = 32\npixel_dim = 32", "dim = 16\npixel_dim = 16")
    text = text.replace("steps = 3", "epochs = 2\nthreads = 1")
    text = text.replace("[world]\n", "[world]\nval_clips = 4\n")
    if not private:
        text = text.replace("enabled = true", "enabled = false", 1)
    path = tmp_path / ("dp.toml" if private else "plain.toml")
    path.write_text(text)
    return path


def test_tune_writes_the_best_config_and_one_child_run_per_trial(tmp_path: Path) -> None:
    config = small_config(tmp_path, private=False)
    out = tmp_path / "best.toml"
    result = CliRunner().invoke(
        app, ["tune", "--config", str(config), "--trials", "3", "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["metric"] == "loss" and report["direction"] == "minimize"
    assert len(report["trials"]) == 3
    complete = [t for t in report["trials"] if t["state"] == "complete"]
    assert report["best_value"] == min(t["value"] for t in complete)
    best = load_config(out)  # a valid experiment config
    assert best.train.lr == pytest.approx(report["best_params"]["lr"])
    assert best.model.fusion == report["best_params"]["fusion"]
    assert tomllib.loads(out.read_text())["world"]["clips"] == 8  # the rest is the input config
    client = MlflowClient()
    parent = client.get_run(report["run_id"])
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{report['run_id']}'"
    )
    assert {r.info.run_id for r in children} == {t["run_id"] for t in report["trials"]}
    assert parent.data.metrics["tune/best_value"] == pytest.approx(report["best_value"])

    before = out.read_bytes()
    again = CliRunner().invoke(
        app, ["tune", "--config", str(config), "--trials", "1", "--out", str(out)]
    )
    assert again.exit_code == 2 and "--force" in again.output
    assert out.read_bytes() == before  # never replaced without --force


def test_tuning_takes_no_private_data() -> None:
    """Trials run on the public synthetic world only: there is no way to point one at a store."""
    result = CliRunner().invoke(app, ["tune", "--help"])
    assert result.exit_code == 0
    for private in ("--store", "--key-file", "--bundle"):
        assert private not in result.output


def test_the_search_space_under_dp(tmp_path: Path) -> None:
    cfg = load_config(small_config(tmp_path, private=True))
    trial = optuna.create_study().ask()
    overrides = suggest(trial, cfg)
    assert "dwa" not in trial.distributions["loss_weighting"].choices  # un-noised losses
    assert 0.1 <= overrides["privacy"]["max_grad_norm"] <= 10.0
    assert set(trial.distributions["batch_size"].choices) <= {4, 8}  # at most the 8 clips
    plain = load_config(small_config(tmp_path, private=False))
    trial = optuna.create_study().ask()
    assert "privacy" not in suggest(trial, plain)
    assert "dwa" in trial.distributions["loss_weighting"].choices


@pytest.mark.parametrize(
    ("metric", "goal"),
    [("loss", "minimize"), ("action/accuracy", "maximize"), ("quality/mae", "minimize")],
)
def test_direction_follows_the_metric(metric: str, goal: str) -> None:
    assert direction(metric) == goal


@pytest.mark.integration
@pytest.mark.slow  # two simulations on Ray, ~40 s: make test-slow
def test_federated_trials_are_simulations_of_the_public_world(tmp_path: Path) -> None:
    """``--federated``: each trial is a Flower simulation on Ray (a child run of the study) and
    the search tunes local epochs, which the written config carries."""
    from testkit.fed import write_config

    config = write_config(tmp_path, clips=16, clients=2, rounds=1)
    text = config.read_text().replace("enabled = true", "enabled = false", 1)
    config.write_text(text + "[tracking]\nexperiment = 'fedtune'\n")
    out = tmp_path / "best.toml"
    args = ["tune", "--config", str(config), "--trials", "2", "--out", str(out), "--json"]
    result = CliRunner().invoke(app, [*args, "--federated", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [t["state"] for t in report["trials"]] == ["complete", "complete"]
    assert "local_epochs" in report["best_params"] and "epochs" not in report["best_params"]
    best = load_config(out)
    assert best.federated.local_epochs == report["best_params"]["local_epochs"]
    client = MlflowClient()
    for trial in report["trials"]:
        run = client.get_run(trial["run_id"])
        assert run.data.tags["mlflow.parentRunId"] == report["run_id"]
        assert run.data.params["federated.local_epochs"] == str(trial["params"]["local_epochs"])
        assert (tmp_path / "runs" / trial["run_id"]).is_dir()  # a real simulation's run dir
