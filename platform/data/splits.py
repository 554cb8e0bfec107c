"""Training, validation and test clips of one encrypted store, for centralized training.

:func:`split_store` opens the store with its key (clips are decrypted in memory when read, never
written out) and splits its clip ids once, by a generator seeded from ``[train] seed``: the
test share is ``holdout`` of the clips, the validation share ``holdout`` of the rest, the rest
trains. The split is by clip id, which is also the unit DP-SGD protects, so no clip is both
trained on and scored. A store too small to give each part a clip is a one-line
:class:`UsageError` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from veilfed.crypto.keys import read_key_file
from veilfed.data.store import EncryptedStore
from veilfed.errors import UsageError

MIN_CLIPS = 3  # one each for training, validation and test


@dataclass(frozen=True)
class StoreSplit:
    """An opened store and its clip ids per part (each sorted)."""

    root: str
    source: Any  # the EncryptedStore: a ClipSource
    train: list[str]
    validation: list[str]
    test: list[str]

    def describe(self) -> dict[str, Any]:
        """What MLflow logs about the data (never a clip id: ids may be people's file names)."""
        return {
            "store": self.root,
            "train_clips": len(self.train),
            "validation_clips": len(self.validation),
            "test_clips": len(self.test),
        }


def split_ids(ids: list[str], holdout: float, seed: int) -> tuple[list[str], list[str], list[str]]:
    """(train, validation, test) ids; each part non-empty when ``len(ids) >= MIN_CLIPS``."""
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n_test = min(len(ids) - 2, max(1, round(holdout * len(ids))))
    n_val = min(len(ids) - n_test - 1, max(1, round(holdout * (len(ids) - n_test))))
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return sorted(train), sorted(val), sorted(test)


def split_store(root: str | Path, key_file: str | Path, holdout: float, seed: int) -> StoreSplit:
    """The store at ``root`` opened with the key in ``key_file`` and split (module docstring)."""
    store = EncryptedStore.open(root, read_key_file(key_file))
    ids = sorted(store.ids())
    if len(ids) < MIN_CLIPS:
        raise UsageError(
            f"{root}: the store holds {len(ids)} clips; training needs at least {MIN_CLIPS} "
            "(training, validation, test); ingest more with `veilfed data ingest`"
        )
    train, val, test = split_ids(ids, holdout, seed)
    return StoreSplit(str(root), store, train, val, test)
