"""A client's round trains with the one training loop: every ``[train]`` field reaches it."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from testkit.fed import make_run, write_config

from veilfed.clients.inputs import client_inputs
from veilfed.clients.trainer import RoundResult, train_round
from veilfed.errors import UsageError
from veilfed.federation.digest import model_digest
from veilfed.federation.weights import initial_arrays
from veilfed.privacy.noise import INSECURE_SEED_ENV
from veilfed.privacy.report_schema import SignedReport


def _run_round(
    tmp_path: Path,
    name: str,
    train: str = "",
    model: str = "",
    federated: str = "",
    private: bool = False,
    proximal_mu: float = 0.0,
) -> tuple[RoundResult, dict[str, np.ndarray]]:
    """Round 1 of client-0000 in its own run: the tiny federated config plus ``train`` lines in
    [train], ``model`` lines in [model] and ``federated`` lines in [federated]; privacy off
    unless ``private``. Returns the (trained, not declined) result and the global model it
    started from."""
    run_dir = tmp_path / name
    run_dir.mkdir()
    path = write_config(run_dir)
    text = path.read_text().replace("[train]\n", f"[train]\n{train}")
    path.write_text(text.replace("[model]\n", f"[model]\n{model}") + federated)
    settings, tracker = make_run(run_dir, path, epsilon=None if private else math.inf)
    tracker.finish()
    assert settings.privacy.enabled is private
    inputs = client_inputs(settings, {"partition-id": 0, "num-partitions": 3})
    start = initial_arrays(settings)
    result = train_round(
        settings, inputs, 1, start, proximal_mu=proximal_mu, model_digest=model_digest(start, None)
    )
    assert result.declined is None
    return result, start


def _round(tmp_path: Path, name: str, **kwargs: Any) -> tuple[RoundResult, dict[str, np.ndarray]]:
    """:func:`_run_round` of a round that took at least one step on data: its loss is finite."""
    result, start = _run_round(tmp_path, name, **kwargs)
    assert math.isfinite(result.loss)
    return result, start


def _norm(arrays: dict[str, np.ndarray]) -> float:
    return float(
        np.sqrt(sum(float(np.sum(np.asarray(v, np.float64) ** 2)) for v in arrays.values()))
    )


def _distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return _norm({k: np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64) for k in a})


@pytest.mark.parametrize("private", [False, True], ids=["plain", "dp-sgd"])
def test_weight_decay_reaches_the_clients_optimizer(tmp_path, private, monkeypatch):
    """A huge weight decay shrinks the weights the round releases (each step multiplies them
    by 1 - lr · weight_decay = 0.75); DP noise is far smaller than that shrinkage.

    The Poisson sample is pinned to one that trains on data: the shard's 3 training clips at
    sample rate 1/2 leave both steps of a round empty with probability 1/64, and such a round
    has no loss (see the test below)."""
    monkeypatch.setenv(INSECURE_SEED_ENV, "0")
    plain, _ = _round(tmp_path, "wd0", private=private)
    decayed, _ = _round(tmp_path, "wd5", train="weight_decay = 5.0\n", private=private)
    assert _norm(decayed.arrays) < 0.8 * _norm(plain.arrays)


def test_a_dp_round_sampling_no_clip_has_finite_weights_and_no_loss(tmp_path, monkeypatch):
    """Insecure seed 89 draws an empty Poisson batch at both steps of the round: two noise-only
    steps (the accountant counts both), weights that are finite and moved by noise and weight
    decay, and a NaN loss (no step on data), which the coordinator's loss average skips."""
    monkeypatch.setenv(INSECURE_SEED_ENV, "89")
    result, start = _run_round(tmp_path, "empty", train="weight_decay = 5.0\n", private=True)
    assert math.isnan(result.loss), "seed 89 no longer draws an all-empty round: pick another"
    assert all(np.isfinite(np.asarray(v, np.float64)).all() for v in result.arrays.values())
    assert _norm(result.arrays) < 0.8 * _norm(start)
    assert SignedReport.from_json(result.report).report.steps_round == 2


def test_the_optimizer_choice_is_used(tmp_path):
    """Same seed, same shard, same start: only the optimizer differs, and so does the update."""
    sgd, start = _round(tmp_path, "sgd")
    again, _ = _round(tmp_path, "sgd-again", train='optimizer = "sgd"\n')
    adam, _ = _round(tmp_path, "adam", train='optimizer = "adam"\n')
    momentum, _ = _round(tmp_path, "momentum", train="momentum = 0.9\n")
    assert _distance(sgd.arrays, again.arrays) == 0.0  # the round is deterministic without DP
    assert _distance(adam.arrays, sgd.arrays) > 0.1 * _distance(sgd.arrays, start)
    assert _distance(momentum.arrays, sgd.arrays) > 0.0


def test_dwa_task_weights_move_within_a_client_round(tmp_path):
    """Dynamic weight average sees each local epoch's mean task losses (``end_epoch``): after two
    epochs the task weights it releases are no longer uniform."""
    one_epoch, _ = _round(tmp_path, "one-epoch", model='loss_weighting = "dwa"\n')
    dwa, _ = _round(
        tmp_path, "dwa", model='loss_weighting = "dwa"\n', federated="local_epochs = 2\n"
    )
    (key,) = [k for k in dwa.arrays if k.endswith("weighting.dynamic")]
    assert np.allclose(one_epoch.arrays[key], 1.0)  # one epoch: DWA is still uniform
    assert int(dwa.arrays[key.replace("dynamic", "epochs")]) == 2
    assert not np.allclose(dwa.arrays[key], 1.0)
    assert np.isclose(float(np.sum(dwa.arrays[key])), len(dwa.arrays[key]))  # n · softmax


def test_fedprox_pulls_the_update_towards_the_global_model(tmp_path):
    free, start = _round(tmp_path, "mu0")
    pulled, _ = _round(tmp_path, "mu10", proximal_mu=10.0)  # lr · μ = 0.5 per step
    assert _distance(pulled.arrays, start) < 0.8 * _distance(free.arrays, start)


def test_a_dp_round_refuses_a_loss_weighting_fed_by_raw_losses(tmp_path):
    """Attack: a coordinator asks for DP-SGD with ``dwa``, whose task weights are buffers computed
    from un-noised epoch losses and would leave with the update. The run settings bypass the
    coordinator's own check (they travel in the message; a config with DP on in [privacy] is
    already refused when the client parses it); the client declines and names why."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    settings, tracker = make_run(run_dir, write_config(run_dir))
    tracker.finish()
    assert settings.privacy.enabled
    config = json.loads(json.dumps(settings.config))
    config["model"]["loss_weighting"] = "dwa"
    config["privacy"]["enabled"] = False  # DP from the run's client privacy, as --epsilon gives
    forged = dataclasses.replace(settings, config=config)
    inputs = client_inputs(forged, {"partition-id": 0, "num-partitions": 3})
    start = initial_arrays(forged)
    result = train_round(forged, inputs, 1, start, model_digest=model_digest(start, None))
    assert result.declined is not None and "'dwa'" in result.declined
    assert "client-0000" in result.declined and result.report is None
    acc = inputs.state.accountant(settings.privacy.accountant, settings.run_id)
    assert acc.last_round is None  # nothing spent, nothing released


def test_the_coordinator_refuses_dwa_with_dp_before_a_run_exists(tmp_path):
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("[model]\n", '[model]\nloss_weighting = "dwa"\n'))
    with pytest.raises(UsageError, match=r"model\.loss_weighting 'dwa'.*DP-SGD"):
        make_run(tmp_path, path)
    with pytest.raises(UsageError, match=r"loss_weighting 'dwa'"):
        make_run(tmp_path, path, epsilon=4.0)
