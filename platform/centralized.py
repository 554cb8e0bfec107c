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
from veilfed.data.dataset import ClipDataset, MemorySource, collate, in_order
from veilfed.data.splits import StoreSplit
from veilfed.data.windowed import OneWindowPerClip, read_span, window_ids
from veilfed.devices import resolve
from veilfed.epochs import EpochRun, OnEpoch, metric_name, train_epochs
from veilfed.metrics import fit_baselines
from veilfed.model import create_model, saved, score
from veilfed.model.init import freeze, init_from, read_weights
from veilfed.privacy.calibration import noise_for
from veilfed.train import CachedDataset, build_optimizer, make_private, train_collate

CLIENT_ID = "centralized"


VAL_SEED_OFFSET = 2_000_006  # validation world: a third seed, neither training's nor the test's
TEST_SEED_OFFSET = 1_000_003


def loaders(cfg: Any, store: StoreSplit | None = None) -> tuple[Any, Any, Any]:
    """(training, held-out test, validation) loaders: of the synthetic world (the test and the
    validation clips from world seeds training never saw), or of the clips of ``store``."""
    w = cfg.world
    specs = cfg.model.task_specs()
    augment = build_augmentations(cfg.train.augmentations) if cfg.train.augmentations else None
    if store is None:
        train_world = w.world_config()
        source: Any = MemorySource.world(train_world, w.clips)
        train_ds = ClipDataset(source, train_world, tasks=specs)
        test = held_out_loader(cfg, w.seed + TEST_SEED_OFFSET, w.eval_clips)
        validation = val_loader(cfg)
    else:
        world = w.world_config()
        items = window_ids(store.source, store.train, read_span(world, specs))
        train_ds = ClipDataset(store.source, world, ids=items, tasks=specs)
        test, validation = (
            DataLoader(
                CachedDataset(
                    ClipDataset(
                        store.source,
                        world,
                        ids=window_ids(store.source, ids, read_span(world, specs)),
                        tasks=specs,
                    )
                ),
                batch_size=cfg.train.batch_size,
                collate_fn=collate,
            )
            for ids in (store.test, store.validation)
        )
    cached: Any = CachedDataset(train_ds, augment)
    if store is not None and len(items) > len(store.train):  # windows: the file is the unit
        cached = OneWindowPerClip(cached, items, cfg.train.seed, clip_ids=store.train)
    train = DataLoader(
        cached, batch_size=cfg.train.batch_size, shuffle=True, collate_fn=train_collate
    )
    return train, test, validation


def held_out_loader(cfg: Any, seed: int, clips: int) -> DataLoader:
    """``clips`` clips of the config's world under ``seed`` (same distribution, disjoint clips)."""
    world = cfg.world.world_config(seed=seed)
    ds = ClipDataset(MemorySource.world(world, clips), world, tasks=cfg.model.task_specs())
    return DataLoader(CachedDataset(ds), batch_size=cfg.train.batch_size, collate_fn=collate)


def val_loader(cfg: Any) -> DataLoader:
    """``[world] val_clips`` validation clips of a third seed: selection never sees the test."""
    return held_out_loader(cfg, cfg.world.seed + VAL_SEED_OFFSET, cfg.world.val_clips)


def run(
    cfg: Any,
    on_step: Callable[[int, int, float], None] | None = None,
    phase: Callable[[str], AbstractContextManager[Any]] = lambda _: nullcontext(),
    init: str | Path | None = None,
    on_epoch: OnEpoch | None = None,
    tags: dict[str, str] | None = None,
    run_name: str | None = None,
    store: StoreSplit | None = None,
) -> dict[str, Any]:
    """Train and evaluate ``cfg``; returns the run summary (docs/contracts.md).

    Without ``store`` the data is the config's synthetic world; with it, the store's clips split
    into training, validation and test (:func:`veilfed.data.splits.split_store`).

    ``on_step(step, total, loss)`` follows training; ``phase(name)`` wraps the slow phases
    ("synthesizing the world", "validating", "evaluating") so a console can show them;
    ``on_epoch(epoch, val_metrics)`` sees each epoch's validation metrics and stops training by
    returning True (``veilfed.epochs``). ``init`` names a local weights file or a saved model the
    model starts from (:func:`veilfed.model.init.read_weights`; the summary's ``init_from`` says
    what loaded); ``[model] freeze`` is applied before the optimizer and Opacus see the model.
    The final and the best epoch's model are logged to MLflow (``model``, ``model-best``) and
    named in the summary's ``model`` entry. ``tags`` and ``run_name`` go to the MLflow run (a
    tuner's trials are child runs: ``mlflow.parentRunId``).
    """

    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)
    start = time.perf_counter()
    with phase("synthesizing the world" if store is None else "reading the store"):
        train_loader, eval_loader, validation = loaders(cfg, store)
    model = create_model(cfg)
    loaded = None
    if init is not None:
        state, dropped = read_weights(init)
        loaded = init_from(model, state, str(init), dropped)
    freeze(model, cfg.model.freeze)
    device = resolve(t.device, "train.device")
    model.to(device)
    baselines = fit_baselines(model.task_specs, baseline_batches(train_loader))
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
    if store is not None:
        params["data"] = store.describe()
    tracker = tracking.start_run(
        cfg.tracking.experiment or cfg.name,
        params=params,
        run_name=run_name or f"train-{cfg.name}",
        tags=tags,
    )
    with tracker.failing_on_error():
        report = (lambda step, loss: on_step(step, total, loss)) if on_step else None
        trained = train_epochs(
            model, train_loader, validation, optimizer, t, tracker, privacy, report, on_epoch, phase
        )
        stats = trained.stats
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
        epochs_done = trained.epochs
        tracker.log_metrics(logged, step=epochs_done)
        summary = {
            "run_id": tracker.run_id,
            "tracking_uri": tracker.tracking_uri,
            "rounds": epochs_done,
            "steps": stats.steps,
            "wall_s": round(time.perf_counter() - start, 3),
            "device": device.type,
            **scores.to_summary(),
            "clients": clients,
            "he": {
                "enabled": False,
                "ciphertext_bytes": 0,
                "plaintext_bytes": 0,
                "max_abs_error": 0.0,
            },
        }
        summary["model"] = log_models(tracker, model, trained, cfg)
        if loaded is not None:
            summary["init_from"] = loaded.as_dict()
        tracker.log_json(summary, "summary.json")
        tracker.finish()
    return summary


def baseline_batches(train_loader: DataLoader) -> Iterator[dict[str, Any]]:
    """The training clips once each, un-augmented, in the training batch size: what the
    baselines are fitted on (before DP-SGD replaces the loader with Poisson sampling)."""
    data = train_loader.dataset
    samples = getattr(data, "samples", data)
    return in_order(samples, train_loader.batch_size or 1)


def score_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """MLflow metrics of the summary's scores: ``eval/``, ``baseline/`` and ``margin/`` per
    ``<task>/<metric>``."""
    out = {
        f"eval/{task}/{metric_name(k)}": v
        for task, m in summary["metrics"].items()
        for k, v in m.items()
    }
    for task, m in summary.get("baselines", {}).items():
        out |= {f"baseline/{task}/{metric_name(k)}": v for k, v in m.items()}
    for task, m in summary.get("margins", {}).items():
        out |= {f"margin/{task}/{metric_name(k)}": e["margin"] for k, e in m.items()}
    return out


def log_models(tracker: Any, model: Any, trained: EpochRun, cfg: Any) -> dict[str, Any]:
    """Log the final and the best epoch's model; the summary's ``model`` entry (epochs are its
    rounds: ``best_round`` is the best epoch)."""
    final = saved.log_model(tracker, model, cfg, saved.FINAL_MODEL, step=trained.epochs)
    best_epoch = trained.selector.best_round or trained.epochs
    best = saved.log_model(tracker, trained.best_state, cfg, saved.BEST_MODEL, step=best_epoch)
    entry = {"final": final, "best": best, **trained.selector.entry()}
    entry["stopped_early"] = trained.stopped_early
    return entry
