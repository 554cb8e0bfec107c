"""`veilfed train` through the real console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from veilfed.cli.main import app
from veilfed.data import schema

VEILFED = str(Path(sys.executable).parent / "veilfed")
TINY = Path(__file__).resolve().parents[2] / "experiments" / "tiny.toml"


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in __import__("os").environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [VEILFED, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd, env=env
    )


def invoke(*args: str | Path) -> SimpleNamespace:
    """The command in process (MLflow at the test's ``tmp_path/mlflow.db``, as ``run`` in
    ``cwd=tmp_path``), answered like ``run``'s completed process; for the refusals, for speed."""
    res = CliRunner().invoke(app, [str(a) for a in args])
    return SimpleNamespace(returncode=res.exit_code, stdout=res.stdout, stderr=res.stderr)


@pytest.mark.integration
def test_train_tiny_dp_writes_summary_and_mlflow(tmp_path: Path) -> None:
    res = run("train", "--config", TINY, "--summary-json", tmp_path / "s.json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert set(summary["metrics"]) == set(schema.TASKS)  # every head reports its metrics
    assert "psnr" in summary["metrics"]["restoration"]
    client = summary["clients"]["centralized"]
    assert client["steps"] == 3 and client["epsilon"] > 0 and client["noise_multiplier"] == 1.0
    assert summary["tracking_uri"].startswith("sqlite:///") and (tmp_path / "mlflow.db").exists()
    assert "per-task metrics" in res.stdout and "segmentation" in res.stdout
    # every task beside its label-only baseline, with the margin's interval over held-out clips
    assert set(summary["baselines"]) == set(schema.TASKS)
    assert summary["primary"]["moderation"] == "f1" and summary["primary"]["pose"] == "pck_box_0.2"
    assert summary["baselines"]["quality"]["spearman"] == 0.0  # a constant has no ranking
    entry = summary["margins"]["action"]["accuracy"]
    assert entry["margin"] == pytest.approx(entry["value"] - entry["baseline"])
    assert entry["higher_is_better"] is True
    assert summary["margins"]["quality"]["mae"]["higher_is_better"] is False
    lo, hi = entry["margin_ci95"]
    assert lo <= entry["margin"] <= hi
    assert "baseline" in res.stdout and "margin 95% CI" in res.stdout

    from mlflow.tracking import MlflowClient

    run_ = MlflowClient(summary["tracking_uri"]).get_run(summary["run_id"])
    assert "eval/action/accuracy" in run_.data.metrics
    assert "eval/pose/pck_0.1" in run_.data.metrics
    assert run_.data.metrics["baseline/action/accuracy"] == pytest.approx(
        summary["baselines"]["action"]["accuracy"]
    )
    assert "margin/action/accuracy" in run_.data.metrics
    assert run_.data.metrics["privacy/eps_max"] == pytest.approx(client["epsilon"])


def test_train_bad_config_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nfusion = 'late'\n")
    res = invoke("train", "--config", bad)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "model.fusion: unknown fusion 'late'" in res.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_train_device_cuda_without_a_gpu_is_one_line(tmp_path: Path, monkeypatch) -> None:
    """In process: what a machine without CUDA answers (faked where torch does see a GPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = CliRunner().invoke(app, ["train", "--config", str(TINY), "--device", "cuda"])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1
    assert res.stderr.startswith("error: --device cuda: torch sees no CUDA device")


def test_train_missing_config_exit_2(tmp_path: Path) -> None:
    res = invoke("train", "--config", tmp_path / "none.toml")
    assert res.returncode == 2 and "no such config file" in res.stderr


@pytest.mark.parametrize(
    ("privacy", "message"),
    [
        ("enabled = true\nepsilon = -3.0\ndelta = 5.0", "privacy.epsilon: must be > 0 (got -3)"),
        ("enabled = true\nepsilon = 8.0\ndelta = 5.0", "privacy.delta: must be in (0, 1) (got 5)"),
        # tiny.toml trains on 8 clips: δ = 0.2 would let a whole clip be released
        ("enabled = true\nnoise_multiplier = 1.0\ndelta = 0.2", "must be < 1/n = 0.125 (n = 8"),
    ],
)
def test_train_rejects_nonsense_dp_targets(tmp_path: Path, privacy: str, message: str) -> None:
    text = TINY.read_text()
    head, _, tail = text.partition("[privacy]\n")
    rest = tail[tail.index("\n[") :] if "\n[" in tail else ""
    bad = tmp_path / "bad.toml"
    bad.write_text(f"{head}[privacy]\n{privacy}\n{rest}")
    res = invoke("train", "--config", bad)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and message in res.stderr and "Traceback" not in res.stderr
    assert str(bad) in res.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing trained, nothing reported


def test_train_refuses_dwa_under_dp(tmp_path: Path) -> None:
    """DWA's task weights come from un-noised losses and are saved with the model."""
    bad = tmp_path / "dwa.toml"
    bad.write_text(TINY.read_text().replace("[model]\n", '[model]\nloss_weighting = "dwa"\n', 1))
    assert "loss_weighting" not in TINY.read_text() and "[model]\n" in TINY.read_text()
    res = invoke("train", "--config", bad)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "model.loss_weighting 'dwa'" in res.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_train_uses_the_configured_optimizer_and_dwa(tmp_path: Path, monkeypatch) -> None:
    """`veilfed train` builds the optimizer [train] names (with its weight decay) and its loss
    weighting sees every epoch: DWA has moved the task weights after two epochs."""
    import torch

    from veilfed import epochs
    from veilfed import train as loop
    from veilfed.centralized import run as train_run
    from veilfed.config import load_config

    text = TINY.read_text().replace(
        'optimizer = "adam"', 'optimizer = "adamw"\nweight_decay = 0.25'
    )
    text = text.replace("steps = 3", "epochs = 2").replace(
        "[model]\n", '[model]\nloss_weighting = "dwa"\n'
    )
    path = tmp_path / "dwa.toml"
    path.write_text(text.replace("enabled = true", "enabled = false", 1))
    seen = {}
    real = loop.train_steps

    def spy(model, loader, optimizer, **kwargs):  # type: ignore[no-untyped-def]
        stats = real(model, loader, optimizer, **kwargs)
        seen["optimizer"] = optimizer
        seen["weights"] = loop.unwrap(model).weighting.current_weights()
        return stats

    monkeypatch.setattr(epochs, "train_steps", spy)  # the epoch loop calls the one loop
    summary = train_run(load_config(path))
    assert isinstance(seen["optimizer"], torch.optim.AdamW)
    assert seen["optimizer"].param_groups[0]["weight_decay"] == 0.25
    weights = seen["weights"]
    assert any(w != pytest.approx(1.0) for w in weights.values())
    assert sum(weights.values()) == pytest.approx(len(weights))
    assert summary["steps"] == 4 and not summary["clients"]  # 8 clips, batch 4, 2 epochs
