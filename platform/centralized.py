"""Centralized training on the config's synthetic world (DP-SGD when ``[privacy] enabled``).

:func:`run` is ``veilfed train`` without the console: it trains, evaluates on held-out clips of a
world seed training never saw, logs to MLflow (``eval/<task>/<metric>``, ``train/loss``,
``privacy/eps_max``) and returns the run summary (docs/contracts.md), which the CLI prints.

Every figure comes with its label-only baseline (:mod:`veilfed.metrics.baselines`), fitted on the
training clips' targets (un-augmented, before any DP wrapping) and scored on the same held-out
clips as the model: MLflow gets ``baseline/<task>/<metric>`` and ``margin/<task>/<metric>``
beside ``eval/<task>/<metric>``, the summary ``baselines``, ``margins`` (with paired bootstrap
95 % intervals over the held-out clips) and ``primary``. The baselines are statistics of the
training labels (e.g. the majority class) released without DP noise, like the evaluation
figures themselves: they are diagnostics of the run, not part of the private release.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from veilfed import tracking
from veilfed.augment import build_augmentations
from veilfed.data.dataset import ClipDataset, MemorySource, collate
from veilfed.metrics import fit_baselines
from veilfed.model import create_model, score
from veilfed.model.init import freeze, init_from, read_weights
from veilfed.privacy.calibration import noise_for
from veilfed.schedule import schedule_for
from veilfed.train import CachedDataset, build_optimizer, make_private, train_collate, train_steps

CLIENT_ID = "centralized"


def loaders(cfg: Any) -> tuple[Any, Any]:
    w = cfg.world
    train_world = w.world_config()
    eval_world = w.world_config(seed=w.seed + 1_000_003)  # disjoint clips, same distribution
    augment = build_augmentations(cfg.train.augmentations) if cfg.train.augmentations else None
    train_ds = CachedDataset(
        ClipDataset(MemorySource.world(train_world, w.clips), train_world), augment
    )
    eval_ds = CachedDataset(ClipDataset(MemorySource.world(eval_world, w.eval_clips), eval_world))
    train = DataLoader(
        train_ds, batch_size=cfg.train.batch_size, shuffle=True, collate_fn=train_collate
    )
    evals = DataLoader(eval_ds, batch_size=cfg.train.batch_size, collate_fn=collate)
    return train, evals


def run(
    cfg: Any,
    on_step: Callable[[int, int, float], None] | None = None,
    phase: Callable[[str], AbstractContextManager[Any]] = lambda _: nullcontext(),
    init: str | Path | None = None,
) -> dict[str, Any]:
    """Train and evaluate ``cfg``; returns the run summary (docs/contracts.md).

    ``on_step(step, total, loss)`` follows training; ``phase(name)`` wraps the slow phases
    ("synthesizing the world", "evaluating") so a console can show them. ``init`` names a local
    weights file the model starts from (:func:`veilfed.model.init.read_weights`; the summary's
    ``init_from`` says what loaded); ``[model] freeze`` is applied before the optimizer and
    Opacus see the model.
    """

    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)
    start = time.perf_counter()
    with phase("synthesizing the world"):
        train_loader, eval_loader = loaders(cfg)
    model = create_model(cfg)
    loaded = None
    if init is not None:
        state, dropped = read_weights(init)
        loaded = init_from(model, state, str(init), dropped)
    freeze(model, cfg.model.freeze)
    baselines = fit_baselines(model.tasks, baseline_batches(train_loader))
    optimizer = build_optimizer(model.parameters(), t)
    steps_per_epoch = len(train_loader)
    total = t.steps or t.epochs * steps_per_epoch
    p = cfg.privacy
    privacy = None
    noise = 0.0
    if p.enabled:
        # Opacus' Poisson rate is one over the batches of an epoch; σ covers all `total` steps.
        rate = 1 / steps_per_epoch
        noise = noise_for(p.noise_multiplier, p.epsilon, p.delta, rate, total, p.accountant)
        model, optimizer, train_loader, privacy = make_private(
            model,
            optimizer,
            train_loader,
            noise,
            p.max_grad_norm,
            mode=p.mode,
            accountant_kind=p.accountant,
        )
    params = {
        "model": {k: v for k, v in vars(cfg.model).items()},
        "train": vars(t),
        "privacy": vars(p),
        "world": vars(cfg.world),
    }
    tracker = tracking.start_run(
        cfg.tracking.experiment or cfg.name, params=params, run_name=f"train-{cfg.name}"
    )
    with tracker.failing_on_error():
        kwargs = {"steps": t.steps} if t.steps else {"epochs": t.epochs}
        report = (lambda step, loss: on_step(step, total, loss)) if on_step else None
        stats = train_steps(
            model,
            train_loader,
            optimizer,
            privacy=privacy,
            on_step=report,
            lr=schedule_for(t, total),
            clip_grad_norm=t.clip_grad_norm,
            **kwargs,
        )
        with phase("evaluating"):
            scores = score(model, eval_loader, baselines, seed=t.seed)
        logged = score_metrics(scores.to_summary())
        logged["train/loss"] = stats.loss
        logged |= {f"train/{task}/loss": v for task, v in stats.task_losses.items()}
        clients: dict[str, Any] = {}
        if privacy is not None:
            eps = privacy.epsilon(p.delta)
            logged |= {
                "privacy/eps_max": eps,
                "privacy/eps_mean": eps,
                f"privacy/client/{CLIENT_ID}/eps": eps,
            }
            clients[CLIENT_ID] = {
                "epsilon": eps,
                "delta": p.delta,
                "noise_multiplier": noise,
                "sample_rate": privacy.sample_rate,
                "steps": privacy.steps,
                "max_grad_norm": p.max_grad_norm,
                "accountant": p.accountant,
                "rounds": 1,
            }
        epochs_done = math.ceil(stats.steps / max(steps_per_epoch, 1))
        tracker.log_metrics(logged, step=epochs_done)
        summary = {
            "run_id": tracker.run_id,
            "tracking_uri": tracker.tracking_uri,
            "rounds": epochs_done,
            "steps": stats.steps,
            "wall_s": round(time.perf_counter() - start, 3),
            **scores.to_summary(),
            "clients": clients,
            "he": {
                "enabled": False,
                "ciphertext_bytes": 0,
                "plaintext_bytes": 0,
                "max_abs_error": 0.0,
            },
        }
        if loaded is not None:
            summary["init_from"] = loaded.as_dict()
        tracker.log_json(summary, "summary.json")
        tracker.finish()
    return summary


def baseline_batches(train_loader: DataLoader) -> Iterator[dict[str, Any]]:
    """The training clips once each, un-augmented, in the training batch size: what the
    baselines are fitted on (before DP-SGD replaces the loader with Poisson sampling). Batched
    by hand: iterating a DataLoader draws from torch's global RNG and would shift training."""
    data = train_loader.dataset
    samples = data.samples if isinstance(data, CachedDataset) else data
    size = train_loader.batch_size or 1
    for start in range(0, len(samples), size):
        yield collate([samples[i] for i in range(start, min(start + size, len(samples)))])


def score_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """MLflow metrics of the summary's scores: ``eval/``, ``baseline/`` and ``margin/`` per
    ``<task>/<metric>``."""
    out = {
        f"eval/{task}/{_mlflow_name(k)}": v
        for task, m in summary["metrics"].items()
        for k, v in m.items()
    }
    for task, m in summary.get("baselines", {}).items():
        out |= {f"baseline/{task}/{_mlflow_name(k)}": v for k, v in m.items()}
    for task, m in summary.get("margins", {}).items():
        out |= {f"margin/{task}/{_mlflow_name(k)}": e["margin"] for k, e in m.items()}
    return out


def _mlflow_name(metric: str) -> str:
    """MLflow metric names allow no '@' (e.g. ``pck@0.1`` -> ``pck_at_0.1``)."""
    return metric.replace("@", "_at_")
