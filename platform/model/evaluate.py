"""Evaluation: accumulate each head's :mod:`veilfed.metrics` meter over a loader.

:func:`evaluate` gives the model's metrics; :func:`score` adds, on the same batches, each task's
label-only baseline (:mod:`veilfed.metrics.baselines`), the margin and paired bootstrap 95 %
intervals over the clips (:mod:`veilfed.metrics.intervals`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from veilfed.devices import model_device, to_device
from veilfed.metrics.baselines import Baseline
from veilfed.metrics.intervals import DEFAULT_RESAMPLES, paired_bootstrap
from veilfed.metrics.scores import Scores
from veilfed.metrics.videos import pools


def unwrap(model: Any) -> Any:
    """The MultiTaskModel inside an Opacus GradSampleModule (or the model itself)."""
    return getattr(model, "_module", model)


def evaluate(model: Any, loader: Iterable[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per-task metrics ``{task: {metric: value}}`` of ``model`` over ``loader``; also reports each
    task's mean loss as ``loss``."""
    return _accumulate(model, loader, {})[2]


def score(
    model: Any,
    loader: Iterable[dict[str, Any]],
    baselines: Mapping[str, Baseline],
    *,
    bootstrap: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Scores:
    """The model and the fitted ``baselines`` scored on the same batches of ``loader``.

    ``metrics`` are :func:`evaluate`'s; ``baselines`` each task's baseline metrics (its ``fill``
    for what a constant leaves undefined); intervals come from ``bootstrap`` paired resamples of
    the clips (0: none), seeded by ``seed``. A task whose baseline is unfitted (no labelled
    training clip) or absent has no baseline and no margin.
    """
    fitted = {t: b for t, b in baselines.items() if b.fitted}
    meters, base_meters, metrics, base_videos = _accumulate(model, loader, fitted)
    base = {
        t: dict(fitted[t].fill) | m.compute() | base_videos.get(t, {})
        for t, m in base_meters.items()
        if m.clips()
    }
    intervals = {
        t: paired_bootstrap(
            meter,
            base_meters.get(t),
            fill=fitted[t].fill if t in fitted else None,
            resamples=bootstrap,
            seed=seed,
        )
        for t, meter in meters.items()
    }
    return Scores.build(metrics, base, intervals, unwrap(model).task_specs)


def _accumulate(model: Any, loader: Iterable[dict[str, Any]], baselines: Mapping[str, Baseline]):
    """(model meters, baseline meters, model metrics with ``loss``, baselines' video-level
    metrics) over ``loader``; windows of a video also give ``video_<metric>`` figures
    (:mod:`veilfed.metrics.videos`)."""
    core = unwrap(model)
    device, cpu = model_device(core), torch.device("cpu")
    was_training = core.training
    core.eval()
    heads = core.task_heads()
    meters = {t: head.metric() for t, head in heads.items()}
    base_meters = {t: heads[t].metric() for t in baselines if t in heads}
    videos, base_videos = pools(heads, list(heads)), pools(heads, list(base_meters))
    loss_sums = dict.fromkeys(core.tasks, 0.0)
    batches = 0
    try:
        with torch.no_grad():
            for batch in loader:
                on_device = to_device(batch, device)
                outputs = core(on_device)
                _, per_task = core.loss(outputs, on_device)
                preds = to_device(core.predict(on_device, outputs), cpu)
                ids = batch["clip_id"]
                for task, meter in meters.items():
                    mask = batch["target_mask"].get(task)
                    meter.update(preds[task], batch["targets"], mask)
                    loss_sums[task] += float(per_task[task])
                    if task in videos:
                        videos[task].add(ids, preds[task], batch["targets"], mask)
                    if task in base_meters:
                        guess = baselines[task].predict(batch)
                        base_meters[task].update(guess, batch["targets"], mask)
                        if task in base_videos:
                            base_videos[task].add(ids, guess, batch["targets"], mask)
                batches += 1
    finally:
        core.train(was_training)
    results = {
        t: m.compute() | videos[t].compute() if t in videos else m.compute()
        for t, m in meters.items()
    }
    for task in results:
        results[task]["loss"] = loss_sums[task] / max(batches, 1)
    return meters, base_meters, results, {t: p.compute() for t, p in base_videos.items()}
