"""The MLflow model registry (veilfed.model.registered): each registration a new version tagged
with its held-out selection value; champion and challenger follow that value in the metric's
direction, never across different metrics; models:/NAME@champion loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from veilfed import tracking
from veilfed.config import load_config
from veilfed.errors import UsageError
from veilfed.model import create_model, load, log_model
from veilfed.model.registered import register

TINY = Path(__file__).resolve().parents[2] / "experiments" / "tiny.toml"


@pytest.fixture(scope="module")
def cfg():
    return load_config(TINY, overrides={"model": {"dim": 16, "pixel_dim": 16}})


def _summary(cfg, seed: int, metric: str, value: float | None) -> dict:
    torch.manual_seed(seed)
    tracker = tracking.start_run("registry")
    uri = log_model(tracker, create_model(cfg), cfg, "model-best")
    entry = {"best": uri, "final": uri, "select_metric": metric, "best_value": value}
    return {"run_id": tracker.run_id, "tracking_uri": tracker.tracking_uri, "model": entry}


def _entry(version: int, alias: str, champion: int) -> dict:
    return {"name": "clips", "version": version, "alias": alias, "champion": champion}


def test_champion_follows_the_held_out_value(cfg) -> None:
    first = _summary(cfg, 0, "loss", 2.0)
    assert register(first, "clips") == _entry(1, "champion", 1)
    worse = _summary(cfg, 1, "loss", 2.5)  # loss: lower is better
    assert register(worse, "clips")["alias"] == "challenger"
    better = _summary(cfg, 2, "loss", 1.5)
    assert register(better, "clips") == _entry(3, "champion", 3)
    other = _summary(cfg, 3, "action/accuracy", 0.99)  # another metric: never compared
    assert register(other, "clips")["alias"] == "challenger"
    champion = load("models:/clips@champion")
    expected = load(better["model"]["best"])
    for k, v in expected.state_dict().items():
        assert torch.equal(champion.state_dict()[k], v)


def test_a_champion_without_a_value_yields_to_the_first_valued_version(cfg) -> None:
    register(_summary(cfg, 0, "loss", float("nan")), "nan")
    assert register(_summary(cfg, 1, "loss", 1.0), "nan")["alias"] == "champion"
    assert register(_summary(cfg, 2, "loss", 0.5), "nan")["champion"] == 3


def test_higher_is_better_metrics_and_a_run_without_a_model(cfg) -> None:
    register(_summary(cfg, 0, "action/accuracy", 0.4), "acc")
    assert register(_summary(cfg, 1, "action/accuracy", 0.6), "acc")["alias"] == "champion"
    with pytest.raises(UsageError, match="--register acc: the run logged no plaintext model"):
        register({"model": {"final": None, "best": None}}, "acc")
