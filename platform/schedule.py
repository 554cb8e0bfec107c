"""Learning-rate schedules over a run's optimizer steps, the same in every training loop.

``[train]`` names the schedule (``schedule``, ``warmup_fraction``, ``min_lr``, with ``lr`` the
peak). :func:`lr_at` is a pure function of the step's position in the run, so the loop that
trains (``veilfed.train.train_steps``) only sets the optimizer's lr before each step:

- ``constant``: ``lr``, after an optional linear warm-up over ``warmup_fraction`` of the run
  (warm-up step ``i`` of ``W`` trains at ``lr · (i + 1) / W``: never at 0);
- ``cosine``: the same warm-up, then a half cosine from ``lr`` down to ``min_lr`` at the run's
  last step;
- ``onecycle``: Smith's one-cycle exactly as ``torch.optim.lr_scheduler.OneCycleLR`` draws it
  (``max_lr = lr``, ``pct_start = warmup_fraction`` or 0.3 when it is 0, ``div_factor = 25``,
  cosine annealing, ending at ``min_lr``): a cosine rise from ``lr / 25`` to ``lr``, then a
  cosine fall to ``min_lr`` at the run's last step.

A step's position: centralized, step ``i`` of ``total = epochs × batches`` (or ``steps``);
federated, local step ``k`` of round ``r`` (1-based) of ``R`` is step ``(r - 1) · K + k`` of
``R · K``, ``K`` the client's local steps per round. So the lr follows one curve over the whole
run whichever client trains: clients with equal shards (IID) step through identical lrs, and the
lr at every round boundary is the same for all. Warm-up is a fraction of the run, not a step
count, for the same reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from veilfed.errors import UsageError

SCHEDULES = ("constant", "cosine", "onecycle")
ONECYCLE_WARMUP = 0.3  # OneCycleLR's pct_start
ONECYCLE_DIV = 25.0  # OneCycleLR's div_factor: the cycle starts at lr / 25


def check_schedule(train: Any, where: str = "train") -> None:
    """``[train]``'s schedule and clipping fields (one-line errors naming ``where.field``)."""
    if train.schedule not in SCHEDULES:
        raise UsageError(f"{where}.schedule: {train.schedule!r}; valid: {', '.join(SCHEDULES)}")
    if not 0 <= train.warmup_fraction < 1:
        raise UsageError(
            f"{where}.warmup_fraction: must be in [0, 1), a share of the run's optimizer steps "
            f"(got {train.warmup_fraction:g})"
        )
    if not 0 <= train.min_lr <= train.lr:
        raise UsageError(
            f"{where}.min_lr: must be in [0, lr = {train.lr:g}] (got {train.min_lr:g})"
        )
    if train.min_lr and train.schedule == "constant":
        raise UsageError(
            f"{where}.min_lr: only cosine and onecycle decay to it; set schedule or drop min_lr"
        )
    if not 0 <= train.clip_grad_norm < math.inf:
        raise UsageError(
            f"{where}.clip_grad_norm: must be >= 0 and finite, 0 = off "
            f"(got {train.clip_grad_norm:g})"
        )


def lr_at(train: Any, step: float, total: float) -> float:
    """The lr of optimizer step ``step`` (0-based) of a run of ``total`` steps under ``train``."""
    total = max(float(total), 1.0)
    step = min(max(float(step), 0.0), total - 1)
    peak, floor = train.lr, train.min_lr
    if train.schedule == "onecycle":  # OneCycleLR's two phases, its step arithmetic
        rise_end = (train.warmup_fraction or ONECYCLE_WARMUP) * total - 1
        low = peak / ONECYCLE_DIV
        if step <= rise_end:
            return _cos(low, peak, step / rise_end if rise_end > 0 else 1.0)
        return _cos(peak, floor, (step - rise_end) / max(total - 1 - rise_end, 1e-12))
    warm = train.warmup_fraction * total  # warm-up steps (a float: a share of the run)
    if step < warm:  # linear, the step's end on the line: the first step is not at 0
        return peak * min((step + 1) / warm, 1.0)
    if train.schedule == "constant":
        return peak
    span = total - 1 - warm  # cosine: peak right after warm-up, floor at the last step
    return _cos(peak, floor, (step - warm) / span if span > 0 else 0.0)


def _cos(start: float, end: float, done: float) -> float:
    """Half a cosine from ``start`` (``done`` = 0) to ``end`` (``done`` = 1)."""
    return end + (start - end) * (1 + math.cos(math.pi * min(max(done, 0.0), 1.0))) / 2


def schedule_for(train: Any, total: float, offset: float = 0.0) -> Callable[[int], float]:
    """The lr of a loop's local step ``k`` (0-based) when it starts ``offset`` steps into a run
    of ``total`` steps (a federated round ``r`` of ``R``: ``offset = (r - 1) · K``,
    ``total = R · K``)."""
    return lambda k: lr_at(train, offset + k, total)
