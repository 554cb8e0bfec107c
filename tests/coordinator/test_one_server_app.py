"""veilfed's one ServerApp in each of its modes, called as Flower calls it (``app(grid,
context)``) on the in-process grid: ``flwr run .`` keys, ``resume`` of a prepared run, and real
nodes (``node-clients``). Each run ends once, in the app: summary.json written, MLflow FINISHED."""

from __future__ import annotations

import json
import logging
import tomllib
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict
from testkit.fed import LocalGrid, make_run, write_config
from testkit.nodes import CLIENTS, node_configs

from veilfed.coordinator import checkpoint
from veilfed.coordinator.server_app import app
from veilfed.coordinator.summary import load_summary
from veilfed.errors import UsageError
from veilfed.federation.settings import RunSettings
from veilfed.launch.simulation import run_config as simulation_run_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _app_logging():  # type: ignore[no-untyped-def]
    """The app installs its stream handler (for app processes); put the logger back."""
    logger = logging.getLogger("veilfed")
    saved = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def _main(grid: LocalGrid, run_config: dict) -> None:  # type: ignore[type-arg]
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    app(grid, context)


def _only_run(runs: Path) -> RunSettings:
    (run_dir,) = [p for p in runs.iterdir() if (p / "settings.json").is_file()]
    return RunSettings.load(run_dir)


def _mlflow_run(settings: RunSettings):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=settings.tracking_uri).get_run(settings.run_id)


def test_flwr_run_keys_prepare_and_finish_a_simulated_run(tmp_path: Path) -> None:
    keys = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    cfg = write_config(tmp_path, clients=3, rounds=3)
    run_config = {**keys, "config": str(cfg), "clients": 3, "rounds": 2, "fraction": 0.67}
    run_config["runs-dir"] = str(tmp_path / "runs")
    _main(LocalGrid(3), run_config)

    settings = _only_run(tmp_path / "runs")
    assert settings.federated.rounds == 2 and settings.federated.sampled_per_round == 2
    assert settings.store  # a simulation: the coordinator made the world's store and shards
    summary = load_summary(settings.run_dir)
    assert summary["run_id"] == settings.run_id and summary["rounds"] == 2
    assert summary["clients"] and {"action", "moderation"} <= set(summary["metrics"])
    # every task beside the baseline the evaluating clients fitted on their training shards
    assert set(summary["baselines"]) == set(summary["metrics"])
    assert summary["primary"]["action"] == "accuracy"
    entry = summary["margins"]["action"]["accuracy"]
    assert entry["margin"] == pytest.approx(entry["value"] - entry["baseline"])
    assert entry["ci95"] is not None and entry["margin_ci95"] is not None  # 2 clients evaluated
    assert entry["ci95"][0] <= entry["value"] <= entry["ci95"][1]
    assert summary["margins"]["action"]["f1"]["margin_ci95"] is None  # primary metrics only
    spread = summary["clients_spread"]["action"]["accuracy"]
    assert spread["min"] <= spread["worst10"] <= spread["mean"]
    run = _mlflow_run(settings)
    assert run.info.status == "FINISHED" and run.data.tags["veilfed.kind"] == "simulation"
    assert run.data.metrics["baseline/action/accuracy"] == pytest.approx(entry["baseline"])


def test_resume_reopens_a_prepared_or_killed_run(tmp_path: Path) -> None:
    settings, tracker = make_run(tmp_path, write_config(tmp_path, clients=2, rounds=2))
    with pytest.raises(KeyboardInterrupt):
        _main(LocalGrid(2, kill_after=3), simulation_run_config(settings))
    assert _mlflow_run(settings).info.status == "FAILED"
    assert checkpoint.load(settings.run_dir).round == 1
    assert not (Path(settings.run_dir) / "summary.json").exists()

    _main(LocalGrid(2), simulation_run_config(settings))  # what `veilfed simulate` passes
    ckpt = checkpoint.load(settings.run_dir)
    assert ckpt.round == 2 and [h["round"] for h in ckpt.history] == [1, 2]
    assert load_summary(settings.run_dir)["rounds"] == 2
    assert _mlflow_run(settings).info.status == "FINISHED"
    assert len(list((tmp_path / "runs").glob("*/settings.json"))) == 1  # no new run


def test_node_clients_run_on_real_nodes(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, clients=2, rounds=1)
    nodes = node_configs(cfg, tmp_path, None)
    grid = LocalGrid(2, node_configs=nodes)
    names = dict(zip(grid.contexts, CLIENTS, strict=True))

    def run_config(names: dict[int, str], runs: str) -> dict[str, object]:
        return {
            "config": str(cfg),
            "clients": 2,
            "node-clients": json.dumps({str(n): c for n, c in names.items()}),
            "runs-dir": str(tmp_path / runs),
            "resume": "",
            "he-context": "",
        }

    _main(grid, run_config(names, "runs"))
    settings = _only_run(tmp_path / "runs")
    assert settings.store == "" and not (Path(settings.run_dir) / "shards.json").exists()
    assert set(load_summary(settings.run_dir)["clients"]) == set(CLIENTS)
    run = _mlflow_run(settings)
    assert run.info.status == "FINISHED" and run.data.tags["veilfed.kind"] == "deployment"

    swapped = dict(zip(grid.contexts, reversed(CLIENTS), strict=True))
    with pytest.raises(UsageError, match="client client-0000: its shard is on node"):
        _main(LocalGrid(2, node_configs=nodes), run_config(swapped, "swapped"))
    assert _mlflow_run(_only_run(tmp_path / "swapped")).info.status == "FAILED"
