"""Selection metric, direction and patience (veilfed.selection), and their [train] fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from veilfed.config import load_config
from veilfed.errors import UsageError
from veilfed.selection import Selector, higher_is_better, metric_value
from veilfed.tasks import task_specs

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.toml"
EVALS = [
    {"action": {"accuracy": 0.2, "loss": 2.0}, "quality": {"mae": 0.3, "loss": 1.0}},
    {"action": {"accuracy": 0.5, "loss": 1.5}, "quality": {"mae": 0.4, "loss": 1.0}},
    {"action": {"accuracy": 0.4, "loss": 1.9}, "quality": {"mae": 0.1, "loss": 0.5}},
]


@pytest.mark.parametrize(
    ("metric", "best_round", "best_value"),
    [("loss", 3, 2.4), ("action/accuracy", 2, 0.5), ("quality/mae", 3, 0.1)],
)
def test_best_round_follows_the_metric_direction(metric, best_round, best_value):
    sel = Selector(metric)
    for rnd, m in enumerate(EVALS, 1):
        sel.update(rnd, m)
    assert (sel.best_round, sel.best_value) == (best_round, pytest.approx(best_value))


def test_direction():
    assert not higher_is_better("loss") and not higher_is_better("quality/mae")
    assert higher_is_better("action/accuracy") and higher_is_better("restoration/psnr")


def test_patience_counts_evaluations_without_improvement_and_survives_a_restart():
    sel = Selector("action/accuracy", patience=2)
    sel.update(1, EVALS[1])
    sel.update(2, EVALS[0])
    assert not sel.should_stop
    resumed = Selector.from_state("action/accuracy", 2, sel.state())
    resumed.update(3, {})  # a round nobody evaluated is no evaluation
    assert not resumed.should_stop
    resumed.update(4, EVALS[2])
    assert resumed.should_stop and resumed.best_round == 1
    assert not Selector("loss", patience=0, since_best=99).should_stop


def test_a_metric_the_head_does_not_report_names_the_ones_it_does():
    with pytest.raises(UsageError, match="action reports accuracy, loss"):
        metric_value("action/f1", EVALS[0])


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"select_metric": "accuracy"}, 'use "loss" or "<task>/<metric>"'),
        ({"select_metric": "juggling/accuracy"}, "task 'juggling' is not in model.tasks"),
        ({"patience": -1}, "train.patience: must be >= 0"),
    ],
)
def test_config_rejects_bad_selection_fields(train, message):
    with pytest.raises(UsageError, match=message) as err:
        load_config(TINY, overrides={"train": train})
    assert "train." in str(err.value) and "\n" not in str(err.value)


def test_config_rejects_no_validation_clips():
    with pytest.raises(UsageError, match="world.val_clips: must be >= 1"):
        load_config(TINY, overrides={"world": {"val_clips": 0}})


def test_a_declared_task_metric_goes_its_kind_s_way():
    """A task outside the synthetic preset takes its direction from its declared kind: a
    regression's mae is lower-is-better, a classification's accuracy higher."""
    specs = task_specs(
        {
            "mos": {"kind": "regression", "range": [1.0, 5.0]},
            "scene": {"kind": "classification", "classes": ["a", "b"]},
        }
    )
    assert not higher_is_better("mos/mae", specs) and higher_is_better("scene/accuracy", specs)
    sel = Selector("mos/mae", 0, specs)
    for rnd, mae in enumerate([0.9, 0.4, 0.6], 1):
        sel.update(rnd, {"mos": {"mae": mae}})
    assert (sel.best_round, sel.best_value) == (2, 0.4)
    resumed = Selector.from_state("mos/mae", 0, sel.state(), specs)
    assert not resumed.update(4, {"mos": {"mae": 0.5}})
