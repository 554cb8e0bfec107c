"""A client's evaluation: the global model and the label-only baselines on its held-out split.

The baselines (:mod:`veilfed.metrics.baselines`) are fitted on the client's own *training*
split — its targets only, un-augmented — once per run and shard (the split is fixed per seed and
client), and scored on the same held-out clips as the model, so each ``eval/<task>/<metric>``
the client reports has its ``baseline/<task>/<metric>`` beside it. A baseline is a statistic of
the training labels (e.g. the majority class) and leaves the node without DP noise, like the
evaluation metrics themselves, and only where those may leave it (``--share-eval-metrics``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader

from veilfed.clients.inputs import ClientInputs
from veilfed.clients.trainer import (
    client_dataset,
    client_device,
    round_model,
    split_shard,
    use_client_threads,
)
from veilfed.data.dataset import collate, in_order
from veilfed.federation.settings import RunSettings
from veilfed.federation.weights import experiment
from veilfed.metrics.baselines import Baseline, fit_baselines
from veilfed.model import score
from veilfed.tasks import TaskSpec

_FITTED: dict[str, dict[str, Baseline]] = {}
_MAX_FITTED = 64  # shards whose baselines a process keeps (a Ray worker serves many clients)


def evaluate_round(
    settings: RunSettings, inputs: ClientInputs, arrays: dict[str, np.ndarray]
) -> tuple[int, dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """(held-out examples, the global model's metrics, the baselines' metrics) per task."""
    use_client_threads()
    train_ids, eval_ids = split_shard(settings, inputs)
    model = round_model(settings, arrays, client_device(settings, inputs.simulated))
    baselines = client_baselines(settings, inputs, model.task_specs, train_ids)
    exp = experiment(settings)
    loader = DataLoader(
        client_dataset(settings, inputs, eval_ids),
        batch_size=exp.train.batch_size,
        collate_fn=collate,
    )
    with torch.no_grad():
        scores = score(model, loader, baselines, bootstrap=0)
    return len(eval_ids), scores.metrics, scores.baselines


def client_baselines(
    settings: RunSettings,
    inputs: ClientInputs,
    tasks: Mapping[str, TaskSpec],
    train_ids: list[str],
) -> dict[str, Baseline]:
    """The baselines of the client's training split, fitted once per (config, client, split)."""
    key = hashlib.sha256(
        json.dumps(
            [settings.config, inputs.client_id, sorted(inputs.missing), list(tasks), train_ids],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    if key not in _FITTED:
        if len(_FITTED) >= _MAX_FITTED:
            _FITTED.clear()
        size = experiment(settings).train.batch_size
        _FITTED[key] = fit_baselines(
            tasks, in_order(client_dataset(settings, inputs, train_ids), size)
        )
    return _FITTED[key]
