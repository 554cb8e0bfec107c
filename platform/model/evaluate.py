"""Evaluation: accumulate each head's :mod:`veilfed.metrics` meter over a loader."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def _unwrap(model: Any) -> Any:
    """The MultiTaskModel inside an Opacus GradSampleModule (or the model itself)."""
    return getattr(model, "_module", model)


def evaluate(model: Any, loader: Iterable[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per-task metrics ``{task: {metric: value}}`` of ``model`` over ``loader``; also reports each
    task's mean loss as ``loss``."""
    core = _unwrap(model)
    was_training = core.training
    core.eval()
    meters = {t: head.metric() for t, head in core.task_heads().items()}
    loss_sums = dict.fromkeys(core.tasks, 0.0)
    batches = 0
    try:
        with torch.no_grad():
            for batch in loader:
                outputs = core(batch)
                _, per_task = core.loss(outputs, batch)
                preds = core.predict(batch, outputs)
                for task, meter in meters.items():
                    meter.update(preds[task], batch["targets"], batch["target_mask"].get(task))
                    loss_sums[task] += float(per_task[task])
                batches += 1
    finally:
        core.train(was_training)
    results = {t: m.compute() for t, m in meters.items()}
    for task in results:
        results[task]["loss"] = loss_sums[task] / max(batches, 1)
    return results
