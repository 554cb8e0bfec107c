"""Windowed clips as dataset items, with the stored clip (the file) as the privacy unit.

A clip ingested with windows (``labels["windows"] = [[start, end], ...]``, see
:class:`veilfed.data.ingest.WindowPlan`) is one item per window in evaluation: item id
``"<clip id>#<k>"`` (:mod:`veilfed.data.items`, :func:`window_ids`), decoded by seeking to the
window (:func:`veilfed.data.windows.decode_window`). A real file stored without windows that lasts
more than :data:`AUTO_LONGER` clip spans (``clip_s``, :func:`read_span`: the world's frames plus
a next-frame task's target frames, at its fps) is cut by the loader into consecutive windows of
one clip span (:func:`spans`), so its frames, audio and transcript always cover the same
seconds; a shorter one is read whole.

Training keeps the *file* as the unit DP-SGD samples and clips, not the window: a file cut into
ten windows would otherwise enter a batch ten times as often as a short one, and ε would hold per
window, not per person's video. :class:`OneWindowPerClip` therefore presents one item per file
and hands out that file's windows in turn, one per draw, in an order fixed by the clip id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from veilfed.data.items import split_window_id, window_item
from veilfed.data.video import probed_duration
from veilfed.data.windows import Window, plan_windows
from veilfed.errors import UsageError

AUTO_LONGER = 2.0  # clip spans a file stored without windows may last before the loader cuts it


def next_frames(specs: Mapping[str, Any]) -> int:
    """Frames decoded after each clip as a next-frame task's target (0 without one)."""
    return max((s.options["frames"] for s in specs.values() if s.kind == "next_frame"), default=0)


def read_span(world: Any, specs: Mapping[str, Any]) -> float:
    """Seconds one clip is read over: the world's frames and the next-frame targets at its fps."""
    return (world.frames + next_frames(specs)) / world.fps


def spans(labels: Mapping[str, Any], clip_s: float | None = None) -> list[list[float]]:
    """``[[start, end], ...]`` a stored clip is read in: its stored windows; else, with
    ``clip_s`` and a real file longer than :data:`AUTO_LONGER` × ``clip_s`` (by its probed
    duration), consecutive ``clip_s`` windows; else none (the clip is read whole)."""
    stored = labels.get("windows") or []
    if stored or not clip_s or labels.get("synthetic", True):
        return list(stored)
    duration = probed_duration(labels.get("source") or {})
    if duration is None or duration <= AUTO_LONGER * clip_s:
        return []
    return [[w.start, w.end] for w in plan_windows(duration, clip_s)]


def window_of(
    labels: Mapping[str, Any], k: int, clip_id: str, clip_s: float | None = None
) -> Window:
    """Window ``k`` of a clip's windows (:func:`spans`); a one-line error when there is none."""
    spans_ = spans(labels, clip_s)
    if not 0 <= k < len(spans_):
        raise UsageError(
            f"{clip_id}: window {k} does not exist (the clip has {len(spans_)} windows); "
            "re-ingest with --window or use the clip id alone"
        )
    return Window.from_json(spans_[k], k)


def window_ids(source: Any, ids: Iterable[str], clip_s: float | None = None) -> list[str]:
    """Each clip id of ``ids``, or its window items when it is read in windows (:func:`spans`)."""
    out: list[str] = []
    for cid in ids:
        n = len(spans(_labels(source, cid), clip_s))
        out += [window_item(cid, k) for k in range(n)] if n else [cid]
    return out


def _labels(source: Any, cid: str) -> Mapping[str, Any]:
    """A clip's labels without its video when the source can (the encrypted store can)."""
    reader = getattr(source, "labels", None)
    return reader(cid) if callable(reader) else source.read(cid)[1]


class OneWindowPerClip(Dataset):
    """One item per clip over ``windows`` (a dataset of window items, e.g. a cached
    ``ClipDataset`` over :func:`window_ids`): item ``i`` is clip ``i``'s next window, cycling
    through its windows in an order fixed by ``seed`` and the clip id, starting ``offset`` draws
    in (a federated client builds the dataset anew each round and passes the draws earlier rounds
    made, so later rounds see later windows). An item id among ``clip_ids`` (the stored ids) is a
    whole clip even when it ends in ``#<digits>``."""

    def __init__(
        self,
        windows: Any,
        item_ids: Sequence[str],
        seed: int = 0,
        offset: int = 0,
        clip_ids: Collection[str] = (),
    ) -> None:
        self.windows = windows
        stored = set(clip_ids)
        groups: dict[str, list[int]] = {}
        for pos, item in enumerate(item_ids):
            clip = item if item in stored else split_window_id(item)[0]
            groups.setdefault(clip, []).append(pos)
        self.clips = list(groups)
        self.order = [
            [group[j] for j in _permutation(len(group), seed, cid)] for cid, group in groups.items()
        ]
        self.draws = [offset] * len(self.clips)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> Any:
        order = self.order[index]
        pos = order[self.draws[index] % len(order)]
        self.draws[index] += 1
        return self.windows[pos]

    @property
    def samples(self) -> list[Any]:
        """Every window once, un-augmented (what label-only baselines are fitted on)."""
        base = getattr(self.windows, "samples", self.windows)
        return [base[pos] for order in self.order for pos in order]


def _permutation(n: int, seed: int, cid: str) -> np.ndarray:
    salt = int.from_bytes(hashlib.sha256(cid.encode()).digest()[:4], "big")
    return np.random.default_rng([seed, salt]).permutation(n)
