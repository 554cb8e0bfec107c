"""Video-level scores of windowed clips: each clip-level task's window outputs averaged per video.

A long file is evaluated window by window (items ``"<clip id>#<k>"``,
:mod:`veilfed.data.windowed`); a video-level label (a scene class, a quality score) applies to
every window. :class:`VideoPool` collects, per video, the mean of its windows' outputs (logits or
values) and the labels of its first labelled window, then fills a fresh meter of the task with one
row per video: its metrics are reported as ``video_<metric>`` beside the window-level ones. Only
heads whose output is one value or vector per clip (``Head.clip_level``) are pooled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from veilfed.data.items import split_window_id
from veilfed.metrics.meter import TaskMetric

VIDEO_PREFIX = "video_"


class VideoPool:
    """Window outputs of one clip-level task, averaged per video (module docstring); ``keys``
    are the task's target keys, the only targets kept (copied, so no batch stays alive)."""

    def __init__(self, new_meter: Callable[[], TaskMetric], keys: Iterable[str]) -> None:
        self.new_meter = new_meter
        self.keys = tuple(keys)
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.targets: dict[str, dict[str, torch.Tensor]] = {}

    def add(
        self,
        item_ids: Sequence[str],
        output: torch.Tensor,
        targets: dict[str, torch.Tensor],
        mask: torch.Tensor | None,
    ) -> None:
        """One batch: ``output`` [B, ...], the batch's ``targets`` and the task's mask [B]."""
        for i, item in enumerate(item_ids):
            video, k = split_window_id(item)
            if k is None or (mask is not None and not bool(mask[i])):
                continue
            value = output[i].detach().float().cpu()
            self.sums[video] = self.sums.get(video, torch.zeros_like(value)) + value
            self.counts[video] = self.counts.get(video, 0) + 1
            if video not in self.targets:
                self.targets[video] = {k: targets[k][i].detach().cpu().clone() for k in self.keys}

    def compute(self) -> dict[str, float]:
        """The task's metrics over videos, named ``video_<metric>``; empty without windows."""
        if not self.sums:
            return {}
        videos = sorted(self.sums)
        output = torch.stack([self.sums[v] / self.counts[v] for v in videos])
        keys = self.targets[videos[0]]
        targets = {k: torch.stack([self.targets[v][k] for v in videos]) for k in keys}
        meter = self.new_meter()
        meter.update(output, targets)
        return {VIDEO_PREFIX + k: v for k, v in meter.compute().items()}


def pools(heads: dict[str, Any], tasks: Sequence[str]) -> dict[str, VideoPool]:
    """A pool per clip-level head among ``tasks``."""
    return {
        t: VideoPool(heads[t].metric, heads[t].spec.keys)
        for t in tasks
        if getattr(heads[t], "clip_level", False)
    }
