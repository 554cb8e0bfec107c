"""``veilfed evaluate``: the clean table, the attacked table with robust metrics beside the
baseline, the MLflow run, and every bad input as one line with exit 2 (no traceback)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from veilfed.cli.main import app
from veilfed.config import load_config
from veilfed.model import create_model
from veilfed.model.saved import save_dir

TINY = Path(__file__).resolve().parents[2] / "experiments" / "tiny.toml"
WORLD = "[world]\nclips = 8\neval_clips = 4\nframes = 4\nsize = 32\nseed = 0\n{extra}\n"
MODEL = (
    '[model]\ndim = 32\npixel_dim = 32\nencoders = {encoders}\nfusion = "concat"\n'
    "[model.tasks]\n{tasks}\n[train]\nbatch_size = 4\n[privacy]\nenabled = false\n"
)
ALL = '{ video = "conv2p1d", audio = "logmel_conv", text = "text_transformer" }'


def _config(folder: Path, name: str, tasks: str, encoders: str = ALL, extra: str = "") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(WORLD.format(extra=extra) + MODEL.format(encoders=encoders, tasks=tasks))
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """Configs and models saved as training saves them: three tasks (two attackable), a
    video-only model, and a world whose clips never carry audio."""
    folder = tmp_path_factory.mktemp("evaluate")
    out = {
        "config": _config(folder, "tiny", "action = 1.0\nmoderation = 1.0\nquality = 1.0"),
        "video_only": _config(folder, "video", "action = 1.0", '{ video = "conv2p1d" }'),
        "silent": _config(folder, "silent", "action = 1.0", extra="p_missing_audio = 1.0"),
    }
    for name in list(out):
        cfg = load_config(out[name])
        out[f"{name}_model"] = save_dir(folder / f"{name}-model", create_model(cfg), cfg)
    return out


def _run(*args: str) -> object:
    return CliRunner().invoke(app, ["evaluate", *args, "--bootstrap", "50"])


def test_clean_evaluation_lists_every_task_beside_its_baseline(saved) -> None:
    res = _run(str(saved["config_model"]), "--config", str(saved["config"]), "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["attack"] is None and report["clips"] == 4
    assert set(report["tasks"]) == {"action", "moderation", "quality"}
    action = report["tasks"]["action"]
    assert action["metric"] == "accuracy" and "robust" not in action
    assert action["margin_clean"] == pytest.approx(action["clean"] - action["baseline"])
    res = _run(str(saved["config_model"]), "--config", str(saved["config"]))
    assert res.exit_code == 0 and "margin (95 % CI)" in res.stdout


def test_an_attack_reports_robust_metrics_and_logs_them(saved) -> None:
    args = [str(saved["config_model"]), "--config", str(saved["config"]), "--attack", "pgd"]
    res = _run(*args, "--eps", "0.03", "--steps", "2", "--modality", "all", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["attack"] == {
        "method": "pgd",
        "eps": 0.03,
        "steps": 2,
        "step_size": pytest.approx(0.0375),
        "modalities": ["video", "audio"],
        "random_start": True,
    }
    assert set(report["tasks"]) == {"action", "moderation"}  # quality is a regression
    for row in report["tasks"].values():
        assert row["robust"] is not None and row["baseline"] is not None
        assert row["margin_robust"] == pytest.approx(row["robust"] - row["baseline"])
        assert len(row["margin_robust_ci95"]) == 2
    run = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(report["run_id"])
    assert run.info.run_name == "evaluate-tiny"
    metrics = run.data.metrics
    assert {"clean/action/accuracy", "robust/action/accuracy", "baseline/action/accuracy"} <= set(
        metrics
    )
    assert metrics["robust/moderation/f1"] == pytest.approx(report["tasks"]["moderation"]["robust"])
    res = _run(*args[:-1], "fgsm", "--eps", "0.03", "--tasks", "moderation")
    assert res.exit_code == 0, res.output
    assert "robust margin (95 % CI)" in res.stdout and "fgsm eps 0.03" in res.stdout


BAD = [
    (["--tasks", "nope"], "--tasks nope: the model has no such task"),
    (["--store", "somewhere"], "--store and --key-file go together"),
    (["--attack", "pgd", "--eps", "0"], "--eps: give a radius > 0 and finite (got 0.0)"),
    (["--attack", "pgd", "--eps", "-0.1"], "--eps: give a radius > 0"),
    (["--attack", "fgsm", "--eps", "nan"], "--eps: give a radius > 0 and finite (got nan)"),
    (["--attack", "pgd", "--eps", "inf"], "--eps: give a radius > 0 and finite (got inf)"),
    (["--attack", "pgd"], "--attack pgd needs --eps"),
    (["--attack", "cw", "--eps", "0.1"], "--attack 'cw': unknown attack; valid: pgd, fgsm"),
    (["--eps", "0.1"], "--eps, --steps and --modality go with --attack"),
    (["--attack", "fgsm", "--eps", "0.1", "--steps", "3"], "--steps is pgd's"),
    (["--attack", "pgd", "--eps", "0.1", "--steps", "0"], "--steps 0: give at least 1"),
    (["--attack", "pgd", "--eps", "0.1", "--modality", "text"], "--modality: 'text'; valid"),
    (["--attack", "pgd", "--eps", "0.1", "--tasks", "quality"], "--tasks quality: a regression"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(saved, args, message) -> None:
    res = _run(str(saved["config_model"]), "--config", str(saved["config"]), *args)
    _refused(res, message)


def test_a_modality_the_model_lacks_is_refused(saved) -> None:
    args = ["--config", str(saved["video_only"]), "--attack", "pgd", "--eps", "0.1"]
    res = _run(str(saved["video_only_model"]), *args, "--modality", "audio")
    _refused(res, "--modality: 'audio' but the model has no audio encoder (its inputs: video)")
    res = _run(str(saved["video_only_model"]), *args, "--modality", "all", "--steps", "1")
    assert res.exit_code == 0, res.output  # all: the inputs the model has


def test_audio_the_held_out_clips_lack_is_refused(saved) -> None:
    args = ["--config", str(saved["silent"]), "--attack", "fgsm", "--eps", "0.1"]
    res = _run(str(saved["silent_model"]), *args, "--modality", "audio")
    _refused(res, "--modality audio: no held-out clip carries audio")


def test_a_config_whose_tasks_are_not_the_models_is_refused(saved) -> None:
    res = _run(str(saved["video_only_model"]), "--config", str(saved["config"]))
    _refused(res, "its tasks (action, moderation, quality) are not the model's (action)")


def _refused(res: object, message: str) -> None:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert message in lines[0], lines[0]


def test_an_attack_on_the_test_clips_of_an_encrypted_store_of_real_videos(saved, tmp_path) -> None:
    """The held-out clips are the store's test split: real MP4s (H.264 + AAC) decrypted in
    memory and decoded, as `veilfed train --store` splits them."""
    key, store = tmp_path / "owner.key", tmp_path / "store"
    runner = CliRunner()
    assert runner.invoke(app, ["keys", "new", "--out", str(key)]).exit_code == 0
    args = ["data", "synth", "--store", str(store), "--key-file", str(key), "--clips", "12"]
    res = runner.invoke(app, [*args, "--frames", "4", "--size", "32"])
    assert res.exit_code == 0, res.output
    res = _run(
        str(saved["config_model"]),
        "--config",
        str(saved["config"]),
        "--store",
        str(store),
        "--key-file",
        str(key),
        "--attack",
        "fgsm",
        "--eps",
        "0.05",
        "--json",
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert 1 <= report["clips"] < 12  # the test split only
    assert report["attack"]["method"] == "fgsm"
    for task in ("action", "moderation"):
        row = report["tasks"][task]
        assert row["clean"] is not None and row["robust"] is not None
