"""The augmentation registry and the config entry point :func:`build_augmentations`.

Augmentations act on one *sample* (``ClipDataset.__getitem__`` output: the batch contract of
docs/contracts.md without the batch dim) and return a new sample; inputs are never modified in
place, so a cached sample can be augmented again. Randomness comes from torch's global generator,
which DataLoader seeds per worker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from veilfed.errors import UsageError
from veilfed.registry import Registry

Sample = dict[str, Any]

AUGMENTATIONS: Registry[Callable[[Sample], Sample]] = Registry("augmentation")


class Augmentation:
    """Base: applies :meth:`apply` with probability ``p`` to a shallow copy of the sample."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise UsageError(f"augmentation {type(self).__name__}: p={p} must be in [0, 1]")
        self.p = p

    def __call__(self, sample: Sample) -> Sample:
        if self.p < 1.0 and float(torch.rand(())) >= self.p:
            return sample
        out = dict(sample)
        if "targets" in sample:
            out["targets"] = dict(sample["targets"])
        return self.apply(out)

    def apply(self, sample: Sample) -> Sample:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def present(sample: Sample, modality: int) -> bool:
    """Whether modality ``modality`` (index into MODALITIES) is present; missing ones stay zeros."""
    mask = sample.get("modality_mask")
    return True if mask is None else bool(mask[modality])


class Compose:
    """Applies augmentations in order."""

    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def build_augmentations(specs: Sequence[str | dict[str, Any]]) -> Compose:
    """Build from config: ``["hflip", {"name": "rotation", "degrees": 10, "p": 0.3}]``."""
    transforms = []
    for spec in specs:
        if isinstance(spec, str):
            transforms.append(AUGMENTATIONS.build(spec))
        elif isinstance(spec, dict) and isinstance(spec.get("name"), str):
            kwargs = {k: v for k, v in spec.items() if k != "name"}
            transforms.append(AUGMENTATIONS.build(spec["name"], **kwargs))
        else:
            raise UsageError(
                f"augmentation spec {spec!r}: use a name or a table with 'name'; valid names: "
                f"{', '.join(AUGMENTATIONS.names())}"
            )
    return Compose(transforms)
