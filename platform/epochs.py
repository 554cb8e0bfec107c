"""Centralized training epoch by epoch: validation after each, the best epoch kept, early stop.

:func:`train_epochs` runs :func:`veilfed.train.train_steps` one epoch at a time (``[train]
steps`` > 0: that many steps in all, at most one epoch's worth per call), evaluates the model on
the validation loader after each epoch, logs ``val/<task>/<metric>`` at step = epoch, keeps the
best epoch's weights in memory (:class:`veilfed.selection.Selector` on ``[train]
select_metric``) and stops after ``[train] patience`` epochs without improvement, or when the
caller's ``on_epoch(epoch, val_metrics)`` returns True (a tuner pruning the run).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from veilfed.model import evaluate
from veilfed.model.evaluate import unwrap
from veilfed.model.saved import cpu_state
from veilfed.schedule import schedule_for
from veilfed.selection import Selector
from veilfed.train import TrainStats, train_steps

OnEpoch = Callable[[int, dict[str, dict[str, float]]], bool | None]


@dataclass
class EpochRun:
    """What :func:`train_epochs` did: the summed training stats, epochs run, the selection and
    the best epoch's weights (CPU tensors)."""

    stats: TrainStats
    epochs: int
    selector: Selector
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    stopped_early: bool = False


def metric_name(metric: str) -> str:
    """MLflow metric names allow no '@' (e.g. ``pck@0.1`` -> ``pck_at_0.1``)."""
    return metric.replace("@", "_at_")


def _add(total: TrainStats, part: TrainStats, sums: dict[str, float]) -> None:
    """Fold one epoch's stats into ``total`` (losses as sums over batches until finished)."""
    total.steps += part.steps
    total.samples += part.samples
    total.wall_s += part.wall_s
    if part.batches:
        total.loss += part.loss * part.batches
        for task, v in part.task_losses.items():
            sums[task] = sums.get(task, 0.0) + v * part.batches
    total.batches += part.batches


def train_epochs(
    model: Any,
    train_loader: Any,
    val_loader: Any,
    optimizer: Any,
    train: Any,
    tracker: Any,
    privacy: Any = None,
    on_step: Callable[[int, float], None] | None = None,
    on_epoch: OnEpoch | None = None,
    phase: Callable[[str], AbstractContextManager[Any]] | None = None,
) -> EpochRun:
    """Train ``model`` per ``train`` (a ``[train]`` section), selecting on ``val_loader``."""
    per_epoch = max(len(train_loader), 1)
    epochs = math.ceil(train.steps / per_epoch) if train.steps else train.epochs
    total = train.steps or epochs * per_epoch  # the lr schedule runs over the planned steps
    selector = Selector(train.select_metric, train.patience, unwrap(model).task_specs)
    out = EpochRun(TrainStats(), 0, selector)
    sums: dict[str, float] = {}
    for epoch in range(1, epochs + 1):
        offset = out.stats.steps
        if train.steps and offset >= train.steps:
            break
        report = (lambda s, loss, o=offset: on_step(o + s, loss)) if on_step else None
        kwargs = {"steps": min(per_epoch, train.steps - offset)} if train.steps else {"epochs": 1}
        part = train_steps(
            model,
            train_loader,
            optimizer,
            privacy=privacy,
            on_step=report,
            lr=schedule_for(train, total, offset),
            clip_grad_norm=train.clip_grad_norm,
            adversarial=train.adversarial,
            **kwargs,
        )
        _add(out.stats, part, sums)
        out.epochs = epoch
        with phase("validating") if phase is not None else nullcontext():
            val = evaluate(model, val_loader)
        logged = {f"val/{t}/{metric_name(k)}": v for t, m in val.items() for k, v in m.items()}
        tracker.log_metrics(logged, step=epoch)
        if out.selector.update(epoch, val):
            out.best_state = cpu_state(model)
        if (on_epoch is not None and on_epoch(epoch, val)) or out.selector.should_stop:
            out.stopped_early = epoch < epochs
            break
    if not out.best_state:  # no finite validation value: the final model stands for the best
        out.best_state = cpu_state(model)
    b = out.stats.batches
    out.stats.loss = out.stats.loss / b if b else math.nan
    out.stats.task_losses = {t: v / b for t, v in sums.items()} if b else {}
    return out
