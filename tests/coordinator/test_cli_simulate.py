"""``veilfed simulate`` bad input: one line, exit 2, no MLflow run left RUNNING."""

from __future__ import annotations

import socket

import pytest
from testkit.fed import write_config
from typer.testing import CliRunner

from veilfed.cli.main import app


def _runs(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "extra", "needle"),
    [
        (["--epsilon", "0"], "", "--epsilon must be > 0"),
        (["--epsilon", "-1"], "", "--epsilon must be > 0"),
        (["--delta", "0.4"], "", "must be < 1/n"),
        (["--fraction", "0"], "", "fraction must be in (0, 1]"),
        (["--fraction", "1.5"], "", "fraction must be in (0, 1]"),
        (["--clients", "7"], "", "each client needs >= 2"),
        (["--clients", "20"], "", "20 clients for 12 clips"),
        ([], 'strategy = "fedsgd"\n', "strategy 'fedsgd' is unknown"),
        ([], "min_fit_clients = 5", "min_fit_clients must be in [1, 3]"),
        (["--ray-address", "127.0.0.1:{port}"], "", "no Ray cluster answers"),
        (["--device", "cuda"], "", "--device cuda: virtual clients need a GPU share"),
        (["--device", "tpu"], "", "--device 'tpu': use one of auto, cpu, cuda"),
        (["--gpus-per-client", "-1"], "", "gpus_per_client must be >= 0"),
        ([], 'update_compression = "zip"\n', "update_compression 'zip': use one of"),
        (["--he"], 'update_compression = "topk"\n', "incompatible with HE"),
    ],
)
def test_bad_input_is_one_line_exit_2_without_a_run(tmp_path, args, extra, needle):
    cfg = write_config(tmp_path, extra="" if extra.startswith("min_fit") else extra)
    if extra.startswith("min_fit"):
        cfg.write_text(cfg.read_text().replace("min_fit_clients = 1", extra))
    args = [a.replace("{port}", str(_free_port())) for a in args]
    result = CliRunner().invoke(app, ["simulate", "--config", str(cfg), *args])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], result.output
    assert all(r.info.status != "RUNNING" for r in _runs(tmp_path))


def test_unknown_task_and_missing_store_are_one_line(tmp_path):
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace("moderation = 1.0", "telepathy = 1.0"))
    result = CliRunner().invoke(app, ["simulate", "--config", str(cfg)])
    assert result.exit_code == 2 and "telepathy" in result.output
    cfg = write_config(tmp_path)
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--config",
            str(cfg),
            "--store",
            str(tmp_path / "nope"),
            "--key-file",
            str(tmp_path / "k"),
        ],
    )
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1


def test_failure_after_the_run_started_marks_it_failed(tmp_path, monkeypatch):
    import veilfed.launch.simulation as sim
    from veilfed.errors import UsageError

    def broken(settings, address):
        raise UsageError("engine exploded")

    monkeypatch.setattr(sim, "run_engine", broken)
    result = CliRunner().invoke(app, ["simulate", "--config", str(write_config(tmp_path))])
    assert result.exit_code == 2 and "engine exploded" in result.output
    runs = _runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.status == "FAILED"


def test_a_dead_engine_ends_the_run_at_once_instead_of_waiting_for_replies(tmp_path, monkeypatch):
    """Ray cannot start (or its backend dies) while the ServerApp waits for replies with a
    15-minute round timeout: the command ends within seconds with one line naming the run, the
    MLflow run is FAILED, and no ServerApp thread is left waiting."""
    import threading
    import time

    from flwr.server.superlink.fleet import vce

    def dead_engine(**_):
        raise RuntimeError("Simulation Runtime crashed.") from ConnectionError("ray: no auth token")

    monkeypatch.setattr(vce, "start_vce", dead_engine)
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace("[federated]\n", "[federated]\nround_timeout_s = 900\n"))
    before = set(threading.enumerate())
    start = time.monotonic()
    result = CliRunner().invoke(app, ["simulate", "--config", str(cfg)])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip() and ln.startswith("error")]
    assert len(lines) == 1 and "simulation engine failed" in lines[0], result.output
    assert "ray: no auth token" in lines[0]
    left = [t for t in threading.enumerate() if t not in before]
    for thread in left:
        thread.join(timeout=10)
    assert not [t for t in left if t.is_alive()], left
    assert time.monotonic() - start < 120
    runs = _runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
