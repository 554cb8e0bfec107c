"""A federated run leaves its final and best global model in MLflow; patience ends it early."""

from __future__ import annotations

import numpy as np
import pytest
from testkit.fed import LocalGrid, make_run, write_config

from veilfed.clients.evaluation import evaluate_round
from veilfed.clients.inputs import client_inputs
from veilfed.coordinator import checkpoint
from veilfed.coordinator.round_record import weighted
from veilfed.coordinator.rounds import Coordinator, sample_clients
from veilfed.coordinator.summary import finish, load_summary
from veilfed.model import load, numpy_state
from veilfed.selection import metric_value


def _eval_of(h: dict) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key, value in h["metrics"].items():
        if key.startswith("eval/"):
            _, task, metric = key.split("/", 2)
            out.setdefault(task, {})[metric] = value
    return out


def test_simulated_run_names_both_models_and_they_reproduce_its_metrics(tmp_path):
    cfg = write_config(tmp_path, clients=2, rounds=3)
    settings, tracker = make_run(tmp_path, cfg)
    Coordinator(LocalGrid(2), settings, tracker).run()
    summary = finish(settings, tracker, 1.0)
    assert load_summary(settings.run_dir)["model"] == summary["model"]
    entry = summary["model"]
    assert entry["final"].startswith("models:/") and entry["best"].startswith("models:/")
    assert entry["encrypted"] is False and entry["select_metric"] == "loss"
    ckpt = checkpoint.load(settings.run_dir)
    final = numpy_state(load(entry["final"]))
    for k, v in ckpt.arrays.items():
        np.testing.assert_array_equal(final[k], v)
    # best round: the argmin of the summed held-out loss the run logged
    losses = {h["round"]: metric_value("loss", _eval_of(h)) for h in ckpt.history}
    assert entry["best_round"] == min(losses, key=losses.get)
    assert entry["best_value"] == pytest.approx(losses[entry["best_round"]])
    best = numpy_state(load(f"runs:/{tracker.run_id}/model-best"))
    for k, v in ckpt.best["arrays"].items():
        np.testing.assert_array_equal(best[k], v)
    # the final model, evaluated by the clients that evaluated the last round, gives its metrics
    chosen = sample_clients(settings.seed + 1, 3, sorted(ckpt.clients), 2)
    results = []
    for pid in range(2):
        inputs = client_inputs(settings, {"partition-id": pid})
        if inputs.client_id in chosen:
            n, metrics, _ = evaluate_round(settings, inputs, final)  # (n, metrics, baselines)
            flat = {f"eval/{t}/{k}": v for t, m in metrics.items() for k, v in m.items()}
            results.append((float(n), flat))
    again = weighted(results)
    for key, value in ckpt.history[-1]["metrics"].items():
        if key.startswith("eval/"):
            assert again[key] == pytest.approx(value, abs=1e-6), key
    logged = tracker.client.get_run(tracker.run_id).data.metrics
    assert logged["eval/action/accuracy"] == pytest.approx(again["eval/action/accuracy"], abs=1e-6)


def test_patience_ends_the_run_early_and_a_resume_stays_stopped(tmp_path):
    # an lr far below float32 resolution: round 2 cannot improve on round 1
    extra = '[train]\noptimizer = "sgd"\nlr = 1e-30\npatience = 1\n'
    text = write_config(tmp_path, clients=2, rounds=4).read_text()
    cfg = tmp_path / "patient.toml"
    cfg.write_text(text.replace("[train]\nbatch_size = 2\nlr = 0.05\n", extra + "batch_size = 2\n"))
    settings, tracker = make_run(tmp_path, cfg)
    Coordinator(LocalGrid(2), settings, tracker).run()
    ckpt = checkpoint.load(settings.run_dir)
    assert ckpt.round == 2 and ckpt.best["round"] == 1 and ckpt.best["since"] == 1
    Coordinator(LocalGrid(2), settings, tracker).run()  # resumed: still stopped
    assert checkpoint.load(settings.run_dir).round == 2
    entry = finish(settings, tracker, 1.0)["model"]
    assert entry["stopped_early"] is True and entry["best_round"] == 1
