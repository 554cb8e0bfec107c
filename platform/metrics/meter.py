"""The task metric accumulator (:class:`TaskMetric`) and its registry, :data:`TASK_METRICS`.

A meter decodes its head's output (see the package docstring for the formats), keeps only the
compact evidence it needs across batches (class indices, per-clip confusion matrices, per-clip
PSNR/SSIM sums) and computes exact dataset-level figures in :meth:`TaskMetric.compute` —
averaging per-batch mAP or Spearman would be wrong. NaN figures (e.g. no visible keypoint) are
left out rather than reported.

Every kept part has the clip as dim 0, so :meth:`TaskMetric.resampler` recomputes the
dataset-level figures on any multiset of clips (the bootstrap in :mod:`veilfed.metrics.intervals`).
Each meter names its ``primary`` metric and, per metric, whether higher is better. The meters
themselves are in :mod:`veilfed.metrics.tasks` (clip-level tasks) and
:mod:`veilfed.metrics.dense` (boxes, masks, keypoints, pixels).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from veilfed.errors import UsageError
from veilfed.registry import Registry
from veilfed.tasks import TaskSpec, as_spec

Resampler = Callable[[torch.Tensor], dict[str, float]]


class TaskMetric:
    """Accumulates one declared task over batches; ``update`` per batch, ``compute`` once at the
    end. Registered per head kind; an instance scores the task ``spec`` (its name, label space
    and target keys).

    ``primary``: the one metric a task is judged by; ``higher_is_better``: per metric (``loss``,
    which evaluation adds, included).
    """

    primary = ""
    higher_is_better: dict[str, bool] = {}
    reads: tuple[str, ...] | None = None  # the target fields it scores (None: all its kind's)

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.task = spec.name
        self.target_keys = tuple(spec.key(f) for f in self.reads) if self.reads else spec.keys
        self._parts: dict[str, list[torch.Tensor]] = defaultdict(list)

    def target(self, targets: dict[str, torch.Tensor], name: str = "target") -> torch.Tensor:
        """This task's target field ``name`` among the batch's ``targets``."""
        return targets[self.spec.key(name)]

    def update(
        self, output: Any, targets: dict[str, torch.Tensor], mask: torch.Tensor | None = None
    ) -> None:
        """Add one batch; ``mask`` is ``batch["target_mask"][task]`` (unlabelled samples skip)."""
        missing = [k for k in self.target_keys if k not in targets]
        if missing:
            raise UsageError(f"metrics for task {self.task!r}: targets lack {', '.join(missing)}")
        tgt = {k: targets[k] for k in self.target_keys}
        if mask is not None:
            keep = mask.bool().reshape(-1).to(_first(output).device)
            if not keep.any():
                return
            output = _select(output, keep)
            tgt = {k: v[keep.to(v.device)] for k, v in tgt.items()}
        with torch.no_grad():
            self._update(output, tgt)

    def compute(self) -> dict[str, float]:
        if not self._parts:
            return {}
        return finite(self._compute(self.parts()))

    def parts(self) -> dict[str, torch.Tensor]:
        """The kept evidence, concatenated over batches; dim 0 is the clip."""
        return {k: torch.cat(v) for k, v in self._parts.items()}

    def clips(self) -> int:
        """Clips kept so far (those whose mask was set)."""
        return sum(len(v) for v in next(iter(self._parts.values()), []))

    def resampler(self) -> Resampler:
        """``at(idx)``: the metrics of the clips ``idx`` (a long tensor, repeats allowed), as
        :meth:`compute` would give for a dataset of exactly those clips. Built once per bootstrap;
        tasks whose ``_compute`` is costly precompute per-clip evidence here."""
        parts = self.parts()
        return lambda idx: finite(self._compute({k: v[idx] for k, v in parts.items()}))

    def _keep(self, **parts: torch.Tensor) -> None:
        for k, v in parts.items():
            self._parts[k].append(v.detach().cpu())

    def _update(self, output: Any, targets: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def _compute(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError


def finite(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` without its NaN figures (undefined on the data seen)."""
    return {k: v for k, v in metrics.items() if not math.isnan(v)}


def better(*higher: str, lower: tuple[str, ...] = ()) -> dict[str, bool]:
    """A meter's ``higher_is_better``: ``higher`` metrics True, ``lower`` and ``loss`` False."""
    return {m: True for m in higher} | {m: False for m in (*lower, "loss")}


def _first(output: Any) -> torch.Tensor:
    return next(iter(output.values())) if isinstance(output, dict) else output


def _select(output: Any, keep: torch.Tensor) -> Any:
    if isinstance(output, dict):
        return {k: v[keep] for k, v in output.items()}
    return output[keep]


def flat_scalar(x: torch.Tensor, name: str) -> torch.Tensor:
    """``[B]`` or ``[B, 1]`` -> ``[B]``: scalar heads may keep a trailing unit dim."""
    if x.dim() == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 1:
        raise UsageError(
            f"metrics for task {name!r}: expected output [B] or [B, 1], got {list(x.shape)}"
        )
    return x


TASK_METRICS: Registry[TaskMetric] = Registry("task metric")


def build_metric(task: str | TaskSpec, **kwargs: Any) -> TaskMetric:
    """A fresh meter of ``task`` (a :class:`TaskSpec`, or a synthetic preset task's name)."""
    spec = as_spec(task)
    return TASK_METRICS.build(spec.kind, spec=spec, **kwargs)


def compute_task_metrics(
    task: str | TaskSpec,
    output: Any,
    targets: dict[str, torch.Tensor],
    mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """One-shot metrics of a single batch (evaluation loops should accumulate instead)."""
    meter = build_metric(task, **kwargs)
    meter.update(output, targets, mask)
    return meter.compute()
