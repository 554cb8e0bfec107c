"""score(): the model and the label-only baselines on the same batches, margins and intervals."""

from __future__ import annotations

import pytest
import torch
from testkit.model import make_batch, tiny

from veilfed.data import schema
from veilfed.metrics import fit_baselines
from veilfed.model import Scores, create_model, evaluate, score


def test_score_is_evaluate_plus_baselines_and_margins() -> None:
    torch.manual_seed(0)
    model = create_model(tiny())
    train = [make_batch(seed=1), make_batch(seed=2)]
    held = [make_batch(seed=3), make_batch(seed=4)]
    baselines = fit_baselines(model.tasks, train)
    scores = score(model, held, baselines, bootstrap=200, seed=0)
    assert isinstance(scores, Scores)
    assert scores.metrics == evaluate(model, held)  # the model's figures are evaluate's
    assert set(scores.baselines) == set(model.tasks) == set(schema.TASKS)
    assert scores.baselines["quality"]["spearman"] == 0.0  # a constant: reported as 0
    assert scores.primary["segmentation"] == "miou" and scores.primary["pose"] == "pck_box_0.2"
    for task, metrics in scores.margins.items():
        assert "loss" not in metrics  # a baseline has no loss
        for metric, e in metrics.items():
            assert e["value"] == scores.metrics[task][metric]
            assert e["baseline"] == scores.baselines[task][metric]
            assert e["margin"] == pytest.approx(e["value"] - e["baseline"])
    acc = scores.margins["action"]["accuracy"]
    assert acc["ci95"][0] <= acc["value"] <= acc["ci95"][1]
    assert acc["margin_ci95"][0] <= acc["margin"] <= acc["margin_ci95"][1]
    assert scores.margins["quality"]["mae"]["higher_is_better"] is False
    assert set(scores.to_summary()) == {"metrics", "baselines", "margins", "primary"}
    # the baseline scores the same held-out clips whatever the model
    again = score(create_model(tiny()), held, baselines, bootstrap=0)
    assert again.baselines == scores.baselines
    assert again.margins["action"]["accuracy"]["margin_ci95"] is None  # no resamples


def test_a_task_without_labelled_training_clips_has_no_baseline() -> None:
    torch.manual_seed(0)
    model = create_model(tiny(tasks={"action": 1.0, "moderation": 1.0}))
    train = make_batch(seed=1)
    train["target_mask"]["action"][:] = False
    scores = score(model, [make_batch(seed=3)], fit_baselines(model.tasks, [train]), bootstrap=0)
    assert set(scores.baselines) == {"moderation"} and "action" not in scores.margins
    assert "accuracy" in scores.metrics["action"]
