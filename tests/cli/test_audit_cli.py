"""`veilfed audit RUN_ID`: report formats, exit codes 0/1/2 and one-line reasons."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from veilfed.cli import audit as audit_cli
from veilfed.cli.main import app
from veilfed.privacy import audit
from veilfed.privacy.accounting import ClientAccountant
from veilfed.privacy.reports import SignedReport, log_reports, record_round, sign

VEILFED = str(Path(sys.executable).parent / "veilfed")
KEY = Ed25519PrivateKey.generate()


def chain(rounds: list[int]) -> list[SignedReport]:
    acc = ClientAccountant("c0")
    out = []
    for r in rounds:
        acc.step(1.1, 0.05, 20)
        report = record_round(acc, round=r, max_grad_norm=1.0, delta=1e-5, epsilon_budget=10.0)
        out.append(sign(report, KEY))
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, MlflowClient, str]:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    return uri, client, client.create_experiment("cli", artifact_location=(root / "a").as_uri())


def new_run(store, reports: list[SignedReport]) -> str:
    uri, client, exp = store
    run_id = client.create_run(exp).info.run_id
    log_reports(run_id, reports, {"c0": KEY.public_key()}, tracking_uri=uri)
    return run_id


def invoke(store, *args: str | Path, uri: str | None = None):
    env = {"MLFLOW_TRACKING_URI": uri or store[0]}
    return CliRunner().invoke(app, ["audit", *map(str, args)], env=env)


def test_default_tolerance_matches_library() -> None:
    assert audit_cli.DEFAULT_TOLERANCE == audit.DEFAULT_TOLERANCE


def test_markdown_html_json_reports(store, tmp_path) -> None:
    run_id = new_run(store, chain([1, 3]))
    res = invoke(store, run_id, "--out", tmp_path / "md")
    assert res.exit_code == 0, res.output
    md = (tmp_path / "md" / "audit.md").read_text()
    assert "Privacy audit — OK: 2 claims from 1 clients verified" in md
    assert (tmp_path / "md" / "eps_by_round.png").read_bytes().startswith(b"\x89PNG")
    res = invoke(store, "run", run_id, "--format", "html")  # explicit subcommand form
    assert res.exit_code == 0 and "data:image/png;base64," in res.stdout
    res = invoke(store, run_id, "--format", "json", "--budget", "9", "--delta", "1e-6")
    data = json.loads(res.stdout)
    assert res.exit_code == 0 and data["ok"] and data["budget"] == 9.0
    assert data["clients"]["c0"]["rounds"] == [1, 3] and data["clients"]["c0"]["steps"] == 40


def test_violation_exits_1_and_still_writes_the_report(store, tmp_path) -> None:
    run_id = new_run(store, chain([1, 2]))
    res = invoke(store, run_id, "--budget", "0.01", "--format", "html", "--out", tmp_path)
    assert res.exit_code == 1 and res.stdout == f"wrote {tmp_path / 'audit.html'}\n"
    assert res.stderr.startswith("error: client c0 round 1: epsilon ")
    assert "(and 1 more violation(s))" in res.stderr and res.stderr.count("\n") == 1
    assert "VIOLATION" in (tmp_path / "audit.html").read_text()


def test_tampered_report_exits_2_without_output(store, tmp_path) -> None:
    reports = chain([1, 2])
    reports[1] = dataclasses.replace(
        reports[1], report=dataclasses.replace(reports[1].report, epsilon=0.1)
    )
    res = invoke(store, new_run(store, reports), "--out", tmp_path / "out")
    assert res.exit_code == 2
    assert res.stderr.startswith("error: cannot audit: client c0 round 2: signature does not")
    assert res.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_missing_round_run_and_store(store, tmp_path) -> None:
    reports = chain([1, 2, 5])
    res = invoke(store, new_run(store, [reports[0], reports[2]]))
    assert res.exit_code == 2 and "client c0 round 5: links to round 2" in res.stderr
    res = invoke(store, "0" * 32)
    assert res.exit_code == 2 and f"run {'0' * 32}: not found" in res.stderr
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    res = invoke(store, "abc", uri=f"http://127.0.0.1:{port}")
    assert res.exit_code == 2 and "cannot be reached" in res.stderr
    assert res.stderr.count("\n") == 1


@pytest.mark.integration
def test_console_script_exit_code(store) -> None:
    run_id = new_run(store, chain([1]))
    proc = subprocess.run(
        [VEILFED, "audit", run_id, "--budget", "0.01", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MLFLOW_TRACKING_URI": store[0]},
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: client c0 round 1:") and proc.stderr.count("\n") == 1
    assert json.loads(proc.stdout)["violations"][0]["kind"] == "budget"


CANARY = """
[privacy]
enabled = true
noise_multiplier = {sigma}
delta = 1e-5

[canary]
canaries = 300
guesses = 60
dim = 600
epochs = 10
"""


def test_canary_exit_codes(tmp_path, monkeypatch) -> None:
    import opacus.optimizers.optimizer as dp_optimizer

    config = tmp_path / "canary.toml"
    config.write_text(CANARY.format(sigma=30.0))
    res = CliRunner().invoke(app, ["audit", "canary", "--config", str(config), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["ok"] and data["epsilon_lower"] <= data["epsilon_claimed"] < 0.5
    monkeypatch.setattr(  # a pipeline that accounts for noise it never adds
        dp_optimizer, "_generate_noise", lambda std, reference, *a, **k: reference * 0
    )
    res = CliRunner().invoke(app, ["audit", "canary", "--config", str(config)])
    assert res.exit_code == 1
    assert res.stderr.startswith(f"error: {config}: empirical epsilon lower bound")
    assert res.stdout.startswith("canary audit: ") and res.stderr.count("\n") == 1
    config.write_text(CANARY.format(sigma=1.0).replace("guesses = 60", "guesses = 61"))
    res = CliRunner().invoke(app, ["audit", "canary", "--config", str(config)])
    assert res.exit_code == 2 and "canary.guesses: must be even" in res.stderr
    res = CliRunner().invoke(app, ["audit", "canary", "--config", str(tmp_path / "no.toml")])
    assert res.exit_code == 2 and "no such config file" in res.stderr
