"""Flatten a model's arrays into one vector (and back) so an update fills few ciphertexts.

Encrypting tensor by tensor would leave most slots of each layer's last ciphertext empty; one flat
vector wastes at most one partly filled ciphertext for the whole model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from veilfed.errors import UsageError


@dataclass(frozen=True)
class ArraySpec:
    """Shape and dtype of one flattened array, to restore it exactly."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def flatten(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, list[ArraySpec]]:
    """Concatenate ``arrays`` (e.g. Flower NDArrays, in state-dict order) into float64."""
    specs = [ArraySpec(tuple(a.shape), np.asarray(a).dtype.str) for a in arrays]
    if not arrays:
        return np.zeros(0, dtype=np.float64), specs
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    return flat, specs


def unflatten(flat: np.ndarray, specs: Sequence[ArraySpec]) -> list[np.ndarray]:
    """Split ``flat`` back into arrays of the recorded shapes and dtypes."""
    total = sum(s.size for s in specs)
    if flat.ndim != 1 or flat.size != total:
        raise UsageError(f"flat update has {flat.size} values but the model specs need {total}")
    out, start = [], 0
    for spec in specs:
        out.append(flat[start : start + spec.size].reshape(spec.shape).astype(spec.dtype))
        start += spec.size
    return out
