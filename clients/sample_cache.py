"""A client's decoded clips, kept in process memory across rounds, never on disk.

Decrypting, decoding and rendering a clip's targets (``ClipDataset.__getitem__``) costs more
than a training step on it, and a client reads the same shard every round. The first read of a
clip builds its sample through the encrypted store; later rounds in the same process (a Ray
actor serving virtual clients, a real node's ClientApp process) take it from here. Augmentations
still apply per use, to a new sample, so the cached one stays clean (as
``veilfed.train.CachedDataset``).

Keys: the store's identity (its resolved directory), the SHA-256 of its ``store.json`` (rewritten
with a fresh Fernet token on every write: a store changed in any way is read again), the
geometry and modalities the sample was built for, and the clip id. The cache is bounded by
``[federated] client_cache_mb`` (least recently used samples go first; 0 turns it off) and lives
only in this process: nothing of it is written anywhere, so plaintext clips stay in memory as the
store's contract requires.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

Sample = dict[str, Any]


def store_digest(root: str | Path) -> str:
    """SHA-256 of the store's ``store.json``: changes with every write to the store ("" when it
    cannot be read; opening the store then says why)."""
    try:
        return hashlib.sha256((Path(root) / "store.json").read_bytes()).hexdigest()
    except OSError:
        return ""


def sample_bytes(sample: Any) -> int:
    """Memory a sample's tensors hold (strings and other leaves count as 0)."""
    if isinstance(sample, torch.Tensor):
        return sample.element_size() * sample.nelement()
    if isinstance(sample, dict):
        return sum(sample_bytes(v) for v in sample.values())
    if isinstance(sample, list | tuple):
        return sum(sample_bytes(v) for v in sample)
    return 0


class SampleCache:
    """A least-recently-used map of samples bounded by their tensors' bytes."""

    def __init__(self, cap_bytes: int = 0) -> None:
        self.cap_bytes = cap_bytes
        self.used = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, tuple[Sample, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def resize(self, cap_bytes: int) -> None:
        with self._lock:
            self.cap_bytes = cap_bytes
            self._evict()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.used = self.hits = self.misses = 0

    def get_or_build(self, key: Hashable, build: Callable[[], Sample]) -> Sample:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return item[0]
            self.misses += 1
        sample = build()
        size = sample_bytes(sample)
        with self._lock:
            if size <= self.cap_bytes and key not in self._items:
                self._items[key] = (sample, size)
                self.used += size
                self._evict()
        return sample

    def _evict(self) -> None:
        while self.used > self.cap_bytes and self._items:
            _, (_, size) = self._items.popitem(last=False)
            self.used -= size


CACHE = SampleCache()  # one per process: every client this process serves shares the cap


class CachedClips(Dataset[Sample]):
    """``dataset`` (a ``ClipDataset`` built without augmentation) read through :data:`CACHE`
    under ``key`` + clip id, then ``augment``-ed per use."""

    def __init__(
        self,
        dataset: Any,
        key: tuple[Hashable, ...],
        augment: Callable[[Sample], Sample] | None = None,
        cache: SampleCache | None = None,
    ) -> None:
        self.dataset = dataset
        self.key = key
        self.augment = augment
        self.cache = CACHE if cache is None else cache

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        clip_id = self.dataset.ids[index]
        sample = self.cache.get_or_build((*self.key, clip_id), lambda: self.dataset[index])
        return self.augment(sample) if self.augment is not None else sample
