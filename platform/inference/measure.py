"""What a compression report measures, shared by every ``veilfed model compress`` method.

* :func:`task_rows`: per task, the primary metric of the model before and after, the label-only
  baseline beside them and both margins (the after-margin with its 95 % interval), from two
  ``veilfed.model.score`` results on the same held-out clips;
* :func:`p50_ms`: the median latency of one call of each candidate, the candidates taking turns
  in one process;
* :func:`session_fn`: an ONNX file as a callable on torch tensors; :func:`state_bytes`: a model's
  weights in bytes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from veilfed.inference.export import onnx_session


def p50_ms(fns: dict[str, Any], inputs: tuple[torch.Tensor, ...], reps: int) -> dict[str, float]:
    """Median ms per call of each of ``fns`` on ``inputs``, after one warm-up call each; the
    calls take turns (one of each per repetition), so a change in the machine's load reaches
    every candidate alike."""
    for fn in fns.values():
        fn(*inputs)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(*inputs)
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}


def session_fn(path: Path) -> Any:
    session = onnx_session(path)
    names = [i.name for i in session.get_inputs()]
    return lambda *x: session.run(None, {n: t.numpy() for n, t in zip(names, x, strict=True)})


def state_bytes(model: Any) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def task_rows(before: Any, after: Any) -> dict[str, dict[str, Any]]:
    """The report's ``tasks`` (module docstring)."""
    tasks = {}
    for task, metric in before.primary.items():
        b, a = before.margins.get(task, {}).get(metric), after.margins.get(task, {}).get(metric)
        tasks[task] = {
            "metric": metric,
            "before": before.metrics[task].get(metric),
            "after": after.metrics[task].get(metric),
            "baseline": b["baseline"] if b else None,
            "margin_before": b["margin"] if b else None,
            "margin_after": a["margin"] if a else None,
            "margin_ci95_after": a["margin_ci95"] if a else None,
        }
    return tasks
