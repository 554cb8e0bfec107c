"""Best-epoch / best-round selection and early stopping by one held-out metric.

``[train] select_metric`` names the metric: ``"loss"`` is the sum of the held-out task losses
(lower is better), ``"<task>/<metric>"`` one metric of one task, as ``evaluate`` reports it
(its direction is the task metric's own: :func:`veilfed.metrics.scores.higher_is_better`).
``[train] patience`` > 0 stops training after that many evaluations in a row without an
improvement; 0 never stops early. Centralized training evaluates once per epoch on validation
clips, the coordinator once per round on the clients' held-out shards: the same
:class:`Selector` runs both, and its state round-trips through :meth:`Selector.state` so a
resumed federated run keeps its best round and its patience count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from veilfed.errors import UsageError
from veilfed.metrics import scores
from veilfed.tasks import TaskSpec

LOSS = "loss"


def check_select_metric(name: str, tasks: Any, where: str = "train.select_metric") -> None:
    """``name`` is ``"loss"`` or ``"<task>/<metric>"`` of a configured task (whether the head
    reports that metric is checked at the first evaluation, which lists the ones it does)."""
    if name == LOSS:
        return
    task, sep, metric = name.partition("/")
    if not sep or not task or not metric or "/" in metric:
        raise UsageError(
            f'{where}: {name!r}; use "loss" or "<task>/<metric>" (e.g. "action/accuracy")'
        )
    if task not in tasks:
        raise UsageError(f"{where}: task {task!r} is not in model.tasks ({', '.join(tasks)})")


def higher_is_better(name: str, specs: Mapping[str, TaskSpec] | None = None) -> bool:
    """The direction of ``select_metric`` ``name``: "loss" is lower-is-better, a task metric
    goes the way its task's kind says (``specs``: the declared tasks; default the synthetic
    preset's)."""
    if name == LOSS:
        return False
    task, _, metric = name.partition("/")
    return scores.higher_is_better((specs or {}).get(task, task), metric)


def metric_value(name: str, metrics: dict[str, dict[str, float]]) -> float | None:
    """The selection metric of one evaluation ``{task: {metric: value}}``; None when it has no
    value (no client shared metrics this round). An unknown metric is a one-line UsageError."""
    if not metrics:
        return None
    if name == LOSS:
        losses = [m[LOSS] for m in metrics.values() if LOSS in m]
        return float(sum(losses)) if losses else None
    task, _, metric = name.partition("/")
    values = metrics.get(task)
    if values is None:
        return None
    if metric not in values:
        raise UsageError(
            f"train.select_metric: {name!r}; {task} reports {', '.join(sorted(values))}"
        )
    return float(values[metric])


@dataclass
class Selector:
    """Tracks the best evaluation so far and the evaluations since it (for ``patience``);
    ``specs`` are the declared tasks, which give a task metric its direction."""

    metric: str = LOSS
    patience: int = 0
    specs: Mapping[str, TaskSpec] = field(default_factory=dict)
    best_round: int | None = None
    best_value: float | None = None
    since_best: int = 0

    def update(self, rnd: int, metrics: dict[str, dict[str, float]]) -> bool:
        """Fold in round/epoch ``rnd``'s evaluation; True when it is the new best. A round
        without a value (or a non-finite one) is no evaluation and leaves the count alone."""
        value = metric_value(self.metric, metrics)
        if value is None or not math.isfinite(value):
            return False
        if self.best_value is None or self._better(value, self.best_value):
            self.best_round, self.best_value, self.since_best = rnd, value, 0
            return True
        self.since_best += 1
        return False

    def _better(self, value: float, best: float) -> bool:
        return value > best if higher_is_better(self.metric, self.specs) else value < best

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience

    def state(self) -> dict[str, Any]:
        return {"round": self.best_round, "value": self.best_value, "since": self.since_best}

    @classmethod
    def from_state(
        cls,
        metric: str,
        patience: int,
        state: dict[str, Any] | None,
        specs: Mapping[str, TaskSpec] | None = None,
    ) -> Selector:
        sel = cls(metric, patience, dict(specs or {}))
        if state:
            sel.best_round, sel.best_value = state.get("round"), state.get("value")
            sel.since_best = int(state.get("since", 0))
        return sel

    def entry(self) -> dict[str, Any]:
        """The selection keys of a summary's ``model`` entry."""
        return {
            "best_round": self.best_round,
            "best_value": self.best_value,
            "select_metric": self.metric,
            "stopped_early": self.should_stop,
        }
