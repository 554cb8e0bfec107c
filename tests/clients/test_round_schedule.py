"""A client's round follows the run's lr schedule and its frozen modules; a run can start from
given weights (``--init-from``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from testkit.fed import make_run, write_config

import veilfed.clients.trainer as trainer
from veilfed.clients.inputs import client_inputs
from veilfed.clients.trainer import split_shard, train_round
from veilfed.config import load_config
from veilfed.coordinator.prepare import prepare
from veilfed.errors import UsageError
from veilfed.federation.digest import model_digest
from veilfed.federation.weights import experiment, initial_arrays
from veilfed.model import create_model, numpy_state
from veilfed.privacy.noise import INSECURE_SEED_ENV
from veilfed.schedule import lr_at


def _settings(tmp_path: Path, train: str = "", model: str = "", private: bool = False):
    path = write_config(tmp_path, rounds=3)
    text = path.read_text().replace("[train]\n", f"[train]\n{train}")
    path.write_text(text.replace("[model]\n", f"[model]\n{model}"))
    settings, tracker = make_run(tmp_path, path, epsilon=None if private else math.inf)
    tracker.finish()
    return settings


def _recording(monkeypatch) -> list[list[float]]:
    """Each round's per-step lrs, recorded from the real loop's stats."""
    seen: list[list[float]] = []
    real = trainer.train_steps

    def record(*args, **kwargs):
        stats = real(*args, **kwargs)
        seen.append(list(stats.lrs))
        return stats

    monkeypatch.setattr(trainer, "train_steps", record)
    return seen


@pytest.mark.parametrize("private", [False, True], ids=["plain", "dp-sgd"])
def test_a_clients_lr_follows_the_run_schedule_across_rounds(tmp_path, monkeypatch, private):
    """Rounds 1..3 of a client step through one cosine over rounds × local steps, and another
    client with as many local steps gets the same lr at every step of a round."""
    monkeypatch.setenv(INSECURE_SEED_ENV, "0")
    settings = _settings(tmp_path, train='schedule = "cosine"\nmin_lr = 0.005\n', private=private)
    seen = _recording(monkeypatch)
    inputs = [client_inputs(settings, {"partition-id": i}) for i in (0, 1)]
    local = [math.ceil(len(split_shard(settings, c)[0]) / 2) for c in inputs]  # batch_size 2
    assert local[0] == local[1] == 2
    arrays = initial_arrays(settings)
    for rnd in (1, 2, 3):
        for c in inputs:
            result = train_round(settings, c, rnd, arrays, model_digest=model_digest(arrays, None))
            assert result.declined is None
        arrays = result.arrays
    train = experiment(settings).train
    k = local[0]
    for i, lrs in enumerate(seen):
        rnd = i // 2 + 1
        assert lrs == pytest.approx([lr_at(train, (rnd - 1) * k + j, 3 * k) for j in range(k)])
    assert seen[0] == seen[1] and seen[4] == seen[5]  # two clients, same round: same lrs
    assert seen[0][0] == pytest.approx(0.05) and seen[-1][-1] == pytest.approx(0.005)


def test_a_frozen_module_leaves_a_dp_round_unchanged(tmp_path, monkeypatch):
    """The video encoder frozen: its weights leave the DP round bit-identical (no noise lands on
    them), while the rest of the model moves."""
    monkeypatch.setenv(INSECURE_SEED_ENV, "0")
    settings = _settings(tmp_path, model='freeze = ["encoders.video"]\n', private=True)
    start = initial_arrays(settings)
    inputs = client_inputs(settings, {"partition-id": 0})
    result = train_round(settings, inputs, 1, start, model_digest=model_digest(start, None))
    assert result.declined is None
    frozen = [k for k in start if k.startswith("encoders.video.")]
    assert frozen and all(np.array_equal(result.arrays[k], start[k]) for k in frozen)
    moved = [k for k in start if not np.array_equal(result.arrays[k], start[k])]
    assert any(k.startswith("head_sets.") for k in moved)


def test_a_run_starts_from_init_weights(tmp_path):
    """``prepare(init=...)`` makes the given weights the run's global model before round 1 (and
    a resumed coordinator reads the same), checked before any MLflow run exists."""
    path = write_config(tmp_path)
    cfg_model = load_config(path).model
    torch.manual_seed(123)
    source = create_model(cfg_model)
    weights = tmp_path / "start.pt"
    torch.save(source.state_dict(), weights)
    settings, tracker = prepare(path, {}, None, None, None, None, tmp_path / "runs2", init=weights)
    tracker.finish()
    start = initial_arrays(settings)
    assert all(np.array_equal(start[k], v) for k, v in numpy_state(source).items())
    runs = tmp_path / "runs3"
    with pytest.raises(UsageError, match="runs:/abc/model"):
        prepare(path, {}, None, None, None, None, runs, init="runs:/abc/model")
    assert not runs.exists()
