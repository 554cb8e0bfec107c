"""Distillation of a trained model (veilfed.inference.distill): the student is narrower, learns
to reproduce the teacher's outputs, is scored beside the same baselines on the same held-out
clips, and is a model like any other: `veilfed model compress --method distill` logs it,
registers it and `veilfed predict` runs it on a real video."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testkit.model import output_gap, trained_tiny
from typer.testing import CliRunner

from veilfed.cli.main import app
from veilfed.config import load_config
from veilfed.errors import UsageError
from veilfed.inference.distill import distill_model, student_config
from veilfed.inference.heldout import Clips
from veilfed.model import create_model
from veilfed.model.saved import save_dir

TINY = Path(__file__).resolve().parents[2] / "experiments" / "tiny.toml"
TASKS = {"action": 1.0, "moderation": 1.0, "quality": 1.0}


@pytest.fixture(scope="module")
def setup():
    overrides = {"model": {"tasks": TASKS}, "privacy": {"enabled": False}}
    return trained_tiny(load_config(TINY, overrides=overrides))


def test_the_student_is_narrower_and_learns_the_teachers_outputs(setup) -> None:
    cfg, teacher, train, test, baselines = setup
    untrained = create_model(student_config(cfg, 16))
    student, student_cfg, report = distill_model(
        teacher, cfg, 16, Clips(train, test, baselines), epochs=10, reps=3
    )
    assert student_cfg.model.dim == 16 and student_cfg.model.pixel_dim == 16
    assert report["params"]["student"] < report["params"]["teacher"] / 2
    assert report["bytes"]["student"] < report["bytes"]["teacher"]
    # On held-out clips it never trained on, the student is closer to the teacher than before.
    assert output_gap(student, teacher, test) < 0.6 * output_gap(untrained, teacher, test)
    action = report["tasks"]["action"]
    assert action["baseline"] is not None and action["margin_after"] == pytest.approx(
        action["after"] - action["baseline"]
    )
    assert all(v > 0 for v in report["latency_p50_ms"].values())


def test_a_width_that_is_not_narrower_is_refused(setup) -> None:
    cfg = setup[0]
    for dim in (32, 64, 2):
        with pytest.raises(UsageError, match=rf"^--student-dim {dim}: give a width in \[4, 32\)"):
            student_config(cfg, dim)


def test_compress_distill_logs_registers_and_predicts(setup, videos, tmp_path: Path) -> None:
    cfg, teacher = setup[0], setup[1]
    model = save_dir(tmp_path / "teacher", teacher, cfg)
    config = tmp_path / "tiny.toml"  # the config the model was trained with: its tasks
    config.write_text(TINY.read_text().split("[model.tasks]")[0]
                      + "[model.tasks]\naction = 1.0\nmoderation = 1.0\nquality = 1.0\n"
                      + "[train]\nbatch_size = 8\n[privacy]\nenabled = false\n")  # fmt: skip
    runner = CliRunner()
    args = ["model", "compress", str(model), "--method", "distill", "--config", str(config),
            "--epochs", "1", "--out", str(tmp_path / "small"), "--register", "small",
            "--json"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["dim"] == {"teacher": 32, "student": 16}
    assert report["registry"] == {"name": "small", "version": 1, "alias": "champion", "champion": 1}
    assert json.loads((tmp_path / "small" / "report.json").read_text())["method"] == "distill"
    res = runner.invoke(app, ["predict", "models:/small/1", str(videos["short"]), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.splitlines()[0])["video"]["action"]["class"]
    res = runner.invoke(app, [*args[:-5], "--out", str(tmp_path / "again"), "--student-dim", "40"])
    assert res.exit_code == 2 and "--student-dim 40: give a width in [4, 32)" in res.stderr
    res = runner.invoke(app, ["model", "compress", str(model), "--config", str(config),
                              "--out", str(tmp_path / "q"), "--register", "x"])  # fmt: skip
    assert res.exit_code == 2 and "--register and --student-dim are distill's" in res.stderr
