"""int8 compression of a trained model (veilfed.inference.quantize): the ONNX graph evaluated
through onnxruntime scores what the eager model scores; the int8 file is smaller and is scored on
the same held-out clips beside the same baselines; `veilfed model compress` refuses a config
whose tasks are not the model's and an --out that exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from veilfed.centralized import baseline_batches, loaders
from veilfed.cli.main import app
from veilfed.config import load_config
from veilfed.inference import Predictor, read_file
from veilfed.inference.export import export
from veilfed.inference.quantize import RuntimeModel, compress_int8
from veilfed.metrics import fit_baselines
from veilfed.model import create_model, evaluate
from veilfed.model.saved import save_dir

TINY = Path(__file__).resolve().parents[2] / "experiments" / "tiny.toml"
TASKS = {"action": 1.0, "moderation": 1.0, "quality": 1.0, "caption": 1.0, "restoration": 1.0}


@pytest.fixture(scope="module")
def setup():
    cfg = load_config(TINY, overrides={"model": {"tasks": TASKS}, "privacy": {"enabled": False}})
    train, test, _ = loaders(cfg)
    model = create_model(cfg).eval()
    return cfg, model, test, fit_baselines(model.task_specs, baseline_batches(train))


@pytest.mark.slow  # 10 s: the int8 test scores through the same RuntimeModel
def test_the_onnx_graph_scores_what_the_eager_model_scores(setup, tmp_path: Path) -> None:
    cfg, model, test, _ = setup
    export(model, cfg.world.world_config(), "onnx", tmp_path / "m.onnx")
    eager, onnx = evaluate(model, test), evaluate(RuntimeModel(model, tmp_path / "m.onnx"), test)
    for task, metrics in eager.items():
        for name, value in metrics.items():
            assert onnx[task][name] == pytest.approx(value, abs=1e-3), (task, name)


def test_int8_is_smaller_and_scored_beside_the_baseline(setup, videos, tmp_path: Path) -> None:
    cfg, model, test, baselines = setup
    report = compress_int8(model, cfg.world.world_config(), test, baselines, tmp_path / "c", reps=3)
    assert report["bytes"]["onnx_int8"] < report["bytes"]["onnx_fp32"]
    assert set(report["tasks"]) == set(TASKS)
    action = report["tasks"]["action"]
    assert action["metric"] == "accuracy" and action["baseline"] is not None
    assert action["after"] is not None and action["margin_after"] == pytest.approx(
        action["after"] - action["baseline"]
    )
    assert all(v > 0 for v in report["latency_p50_ms"].values())
    assert json.loads(Path(report["files"]["int8"] + ".json").read_text())["quantized"]
    # The int8 file predicts on a real video (`veilfed predict MODEL --onnx FILE`).
    world = cfg.world.world_config()
    result = Predictor(model, world, onnx=Path(report["files"]["int8"])).run(
        read_file(videos["short"])
    )
    assert len(result["windows"]) == 2 and result["video"]["action"]["class"]


def test_compress_refuses_a_foreign_config_and_an_existing_out(setup, tmp_path: Path) -> None:
    cfg, model, _, _ = setup
    save_dir(tmp_path / "model", model, cfg)
    (tmp_path / "taken").mkdir()
    runner = CliRunner()
    res = runner.invoke(app, ["model", "compress", str(tmp_path / "model"), "--config", str(TINY),
                              "--out", str(tmp_path / "new")])  # fmt: skip
    assert res.exit_code == 2 and "are not the model's" in res.stderr
    res = runner.invoke(app, ["model", "compress", str(tmp_path / "model"), "--config", str(TINY),
                              "--out", str(tmp_path / "taken")])  # fmt: skip
    assert res.exit_code == 2 and "already exists; give --out a new folder" in res.stderr
