"""A run's scores beside their baselines: metric, baseline, margin and 95 % intervals per task.

The one shape ``veilfed train`` and ``veilfed simulate`` report (docs/contracts.md, "Run
summary"): ``metrics`` ``{task: {metric: value}}``, ``baselines`` ``{task: {metric: B}}``,
``margins`` ``{task: {metric: {"value", "baseline", "margin", "higher_is_better", "ci95",
"margin_ci95"}}}`` and ``primary`` ``{task: metric}``. ``margin`` is always value − baseline;
for a metric with ``higher_is_better`` false (mae, loss) a negative margin is the better one.
An interval is ``[lo, hi]`` or ``None`` when it was not estimated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from veilfed.data.schema import SYNTHETIC_TASKS
from veilfed.metrics.meter import TASK_METRICS
from veilfed.metrics.videos import VIDEO_PREFIX
from veilfed.tasks import TaskSpec, as_spec

Intervals = Mapping[str, Mapping[str, Any]]  # {task: {metric: {"ci95": .., "margin_ci95": ..}}}


def primary_metric(task: str | TaskSpec) -> str:
    """The metric ``task`` is judged by (its kind's :class:`TaskMetric` ``primary``); ``task``
    is a :class:`TaskSpec` or a synthetic preset task's name."""
    return TASK_METRICS.get(as_spec(task).kind).primary


def higher_is_better(task: str | TaskSpec, metric: str) -> bool:
    """Whether a larger ``metric`` is better for ``task`` (unknown metrics: True); a video-level
    ``video_<metric>`` (:mod:`veilfed.metrics.videos`) as its window-level metric."""
    known = TASK_METRICS.get(as_spec(task).kind).higher_is_better
    return known.get(metric.removeprefix(VIDEO_PREFIX), True)


def _interval(value: Any) -> list[float] | None:
    return [float(value[0]), float(value[1])] if value is not None else None


def _spec(task: str, specs: Mapping[str, TaskSpec] | None) -> TaskSpec | str:
    return (specs or {}).get(task, task)


def margins(
    metrics: Mapping[str, Mapping[str, float]],
    baselines: Mapping[str, Mapping[str, float]],
    intervals: Intervals | None = None,
    specs: Mapping[str, TaskSpec] | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """The ``margins`` block: one entry per metric that has both a value and a baseline.
    ``specs``: the declared tasks (default: names of the synthetic preset)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for task, values in metrics.items():
        base = baselines.get(task, {})
        ci = (intervals or {}).get(task, {})
        for metric, value in values.items():
            if metric not in base:
                continue
            c = ci.get(metric, {})
            out.setdefault(task, {})[metric] = {
                "value": value,
                "baseline": base[metric],
                "margin": value - base[metric],
                "higher_is_better": higher_is_better(_spec(task, specs), metric),
                "ci95": _interval(c.get("ci95")),
                "margin_ci95": _interval(c.get("margin_ci95")),
            }
    return out


@dataclass
class Scores:
    """What :func:`veilfed.model.score` gives: model metrics, baselines and margins per task."""

    metrics: dict[str, dict[str, float]]
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    margins: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    primary: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        metrics: dict[str, dict[str, float]],
        baselines: dict[str, dict[str, float]],
        intervals: Intervals | None = None,
        specs: Mapping[str, TaskSpec] | None = None,
    ) -> Scores:
        return cls(
            metrics,
            baselines,
            margins(metrics, baselines, intervals, specs),
            primaries(specs.values() if specs else metrics),
        )

    def to_summary(self) -> dict[str, Any]:
        """The summary keys: ``metrics``, ``baselines``, ``margins``, ``primary``."""
        return {
            "metrics": self.metrics,
            "baselines": self.baselines,
            "margins": self.margins,
            "primary": self.primary,
        }


def primaries(tasks: Iterable[str | TaskSpec]) -> dict[str, str]:
    """``{task: primary metric}`` for the tasks given: specs, or names of the synthetic preset
    (other names skipped)."""
    return {
        (t.name if isinstance(t, TaskSpec) else t): primary_metric(t)
        for t in tasks
        if isinstance(t, TaskSpec) or t in SYNTHETIC_TASKS
    }
