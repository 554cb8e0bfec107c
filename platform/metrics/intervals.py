"""Percentile bootstrap 95 % intervals: over evaluation clips, paired for a model and its baseline.

A resample draws the evaluation clips with replacement and recomputes each dataset-level metric
on the drawn multiset (:meth:`TaskMetric.resampler`: mAP, mIoU, corpus BLEU are recomputed, not
averaged per clip). The model and its baseline are scored on the *same* draw, so the margin's
interval is the interval of the difference, not two intervals side by side. Resamples where a
metric is undefined (e.g. Spearman when every drawn clip is constant) are left out of that
metric's interval; with fewer than two defined resamples the interval is ``None``.

:func:`client_bootstrap` is the federated analogue: the unit drawn is a client's (weighted)
evaluation result, because the coordinator never sees clips.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from veilfed.errors import UsageError
from veilfed.metrics.meter import TaskMetric

DEFAULT_RESAMPLES = 1000
Interval = tuple[float, float]


def percentile_interval(values: Sequence[float]) -> Interval | None:
    """The 2.5th and 97.5th percentiles, or None for fewer than two values."""
    if len(values) < 2:
        return None
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64), [2.5, 97.5])
    return float(lo), float(hi)


def paired_bootstrap(
    model: TaskMetric,
    baseline: TaskMetric | None = None,
    *,
    fill: Mapping[str, float] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, dict[str, Interval | None]]:
    """Per metric of ``model``: ``{"ci95": ..., "margin_ci95": ...}`` (margin = model − baseline).

    ``baseline`` must have seen the same clips in the same order (it is updated from the same
    batches and masks); ``fill`` gives a baseline metric that its constant output leaves
    undefined (see :class:`veilfed.metrics.baselines.Baseline`). Without a baseline only
    ``ci95`` is given. Seeded: the same inputs give the same intervals.
    """
    n = model.clips()
    if baseline is not None and baseline.clips() != n:
        raise UsageError(
            f"bootstrap for task {model.task!r}: the model saw {n} clips, its baseline "
            f"{baseline.clips()}; score both on the same batches"
        )
    if n == 0 or resamples <= 0:
        return {}
    at_model = model.resampler()
    at_base = baseline.resampler() if baseline is not None else None
    fill = dict(fill or {})
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    margins: dict[str, list[float]] = {}
    for _ in range(resamples):
        idx = torch.from_numpy(rng.integers(0, n, n))
        m = at_model(idx)
        b = fill | at_base(idx) if at_base is not None else {}
        for k, v in m.items():
            values.setdefault(k, []).append(v)
            if k in b:
                margins.setdefault(k, []).append(v - b[k])
    out: dict[str, dict[str, Interval | None]] = {}
    for k, vs in values.items():
        out[k] = {"ci95": percentile_interval(vs)}
        if at_base is not None:
            out[k]["margin_ci95"] = percentile_interval(margins.get(k, []))
    return out


def client_bootstrap(
    results: Sequence[tuple[float, float, float | None]],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[Interval | None, Interval | None]:
    """(ci95 of the value, ci95 of the margin) of a weighted mean over clients.

    ``results``: one ``(weight, value, baseline)`` per client (baseline None: no margin). Each
    resample draws clients with replacement and takes the weighted means, paired for value and
    baseline. With fewer than two clients both intervals are None: one client has no spread to
    resample.
    """
    rows = [r for r in results if r[0] > 0]
    if len(rows) < 2 or resamples <= 0:
        return None, None
    w = np.array([r[0] for r in rows], dtype=np.float64)
    v = np.array([r[1] for r in rows], dtype=np.float64)
    paired = all(r[2] is not None for r in rows)
    b = np.array([r[2] if r[2] is not None else np.nan for r in rows], dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(rows), (resamples, len(rows)))
    ws = w[idx]
    value = (ws * v[idx]).sum(1) / ws.sum(1)
    margin = value - (ws * b[idx]).sum(1) / ws.sum(1) if paired else None
    return percentile_interval(value), (percentile_interval(margin) if margin is not None else None)
