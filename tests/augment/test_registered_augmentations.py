"""Every registered augmentation keeps the sample contract, so a new one is tested with no edit:
built from its defaults, it returns a new sample with the same keys, shapes and dtypes (what
``collate`` stacks), pixels in [0, 1], and leaves its input untouched."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from veilfed.augment import AUGMENTATIONS
from veilfed.model.check import OneBatchDataset, example_batch


def _sample() -> dict[str, Any]:
    return OneBatchDataset(example_batch(b=1, t=4, h=32, w=32, seed=3))[0]


def _layout(sample: dict[str, Any]) -> dict[str, Any]:
    """Keys with the shape and dtype of every tensor (nested tables included)."""
    return {
        k: _layout(v)
        if isinstance(v, dict)
        else (tuple(v.shape), v.dtype)
        if isinstance(v, torch.Tensor)
        else type(v)
        for k, v in sample.items()
    }


def _clone(sample: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _clone(v) if isinstance(v, dict) else v.clone() if isinstance(v, torch.Tensor) else v
        for k, v in sample.items()
    }


def _equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(
        _equal(a[k], b[k])
        if isinstance(a[k], dict)
        else torch.equal(a[k], b[k])
        if isinstance(a[k], torch.Tensor)
        else a[k] == b[k]
        for k in a
    )


@pytest.mark.parametrize("name", AUGMENTATIONS.names())
def test_augmentation_contract(name: str) -> None:
    augment = AUGMENTATIONS.build(name, p=1.0)
    sample = _sample()
    before = _clone(sample)
    torch.manual_seed(0)
    out = augment(sample)
    assert out is not sample
    assert _equal(sample, before), f"{name} modified its input in place"
    assert _layout(out) == _layout(before)
    assert float(out["video"].min()) >= 0 and float(out["video"].max()) <= 1
    changed = [k for k in ("video", "audio", "text") if not torch.equal(out[k], before[k])]
    assert changed, f"{name} with p=1 left every modality as it was"
