"""`veilfed train`'s core: both models logged, reproducible, best epoch by validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from veilfed.centralized import loaders, run, val_loader
from veilfed.config import load_config
from veilfed.model import evaluate, load
from veilfed.selection import metric_value

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.toml"


def tiny(**train) -> object:
    overrides = {
        "world": {"val_clips": 4},
        "model": {"dim": 16, "pixel_dim": 16},
        "train": {"threads": 1, **train},
    }
    return load_config(TINY, overrides=overrides)


def _history(summary: dict, prefix: str) -> dict[int, dict[str, dict[str, float]]]:
    """{step: {task: {metric: value}}} of every ``<prefix>/<task>/<metric>`` MLflow metric."""
    client = MlflowClient(summary["tracking_uri"])
    names = [k for k in client.get_run(summary["run_id"]).data.metrics if k.startswith(prefix)]
    out: dict[int, dict[str, dict[str, float]]] = {}
    for name in names:
        _, task, metric = name.split("/", 2)
        for m in client.get_metric_history(summary["run_id"], name):
            out.setdefault(m.step, {}).setdefault(task, {})[metric] = m.value
    return out


def test_train_logs_both_models_and_final_reproduces_logged_metrics():
    cfg = tiny()  # DP on, 3 steps: two epochs of 2 batches
    summary = run(cfg)
    entry = summary["model"]
    assert entry["final"].startswith("models:/") and entry["best"].startswith("models:/")
    assert entry["final"] != entry["best"] and entry["select_metric"] == "loss"
    assert summary["rounds"] == 2 and summary["steps"] == 3 and not entry["stopped_early"]
    torch.manual_seed(0)
    _, held_out, _ = loaders(cfg)
    again = evaluate(load(entry["final"]), held_out)
    logged = _history(summary, "eval/")[summary["rounds"]]
    for task, metrics in summary["metrics"].items():
        for metric, value in metrics.items():
            assert again[task][metric] == pytest.approx(value, abs=1e-6), (task, metric)
            name = metric.replace("@", "_at_")
            assert logged[task][name] == pytest.approx(value, abs=1e-6), (task, metric)


def test_best_epoch_is_the_argmin_of_the_logged_validation_loss():
    cfg = tiny(steps=0, epochs=4, lr=0.01)
    cfg.privacy.enabled = False
    summary = run(cfg)
    entry = summary["model"]
    val = _history(summary, "val/")
    assert sorted(val) == [1, 2, 3, 4]
    per_epoch = {e: metric_value("loss", m) for e, m in val.items()}
    assert entry["best_round"] == min(per_epoch, key=per_epoch.get)
    assert entry["best_value"] == pytest.approx(per_epoch[entry["best_round"]])
    # the best model is the weights of that epoch: it scores that value on the validation clips
    best = evaluate(load(entry["best"]), val_loader(cfg))
    assert metric_value("loss", best) == pytest.approx(entry["best_value"], rel=1e-5)


def test_higher_is_better_metric_selects_the_argmax():
    cfg = tiny(steps=0, epochs=3, lr=0.01, select_metric="action/accuracy")
    cfg.privacy.enabled = False
    entry = run(cfg)["model"]
    val = _history_summary_metric(entry, "action", "accuracy")
    assert entry["best_value"] == max(val.values())
    assert entry["best_round"] == min(e for e, v in val.items() if v == max(val.values()))


def _history_summary_metric(entry: dict, task: str, metric: str) -> dict[int, float]:
    client = MlflowClient()
    run_id = client.get_logged_model(entry["best"].removeprefix("models:/")).source_run_id
    return {m.step: m.value for m in client.get_metric_history(run_id, f"val/{task}/{metric}")}


def test_patience_stops_when_validation_stops_improving():
    # an lr far below float32 resolution leaves the weights, and so the validation loss, as they
    # are: epoch 2 does not improve on epoch 1 and patience 1 ends the run there
    cfg = tiny(steps=0, epochs=6, optimizer="sgd", lr=1e-30, patience=1)
    cfg.privacy.enabled = False
    summary = run(cfg)
    entry = summary["model"]
    assert summary["rounds"] == 2 and entry["stopped_early"] and entry["best_round"] == 1
    assert summary["steps"] == 2 * 2  # 8 clips in batches of 4, two epochs of six


def test_on_epoch_sees_validation_metrics_and_can_stop():
    seen = []

    def on_epoch(epoch, metrics):
        seen.append((epoch, sorted(metrics)))
        return True

    cfg = tiny(steps=0, epochs=3)
    summary = run(cfg, on_epoch=on_epoch)
    assert seen == [(1, sorted(cfg.model.tasks))]
    assert summary["rounds"] == 1 and summary["model"]["stopped_early"]
    assert summary["clients"]["centralized"]["steps"] == 2  # DP spent one epoch only
