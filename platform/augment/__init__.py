"""Augmentations selected by name in config; labels stay aligned with what they describe.

``build_augmentations(["hflip", {"name": "rotation", "degrees": 10}])`` returns one callable for
``ClipDataset(augment=...)``. Available names: ``veilfed model list`` or ``AUGMENTATIONS.names()``.
How to add one: docs/augment.md.
"""

from veilfed.augment import audio, text, video  # noqa: F401  (register the augmentations)
from veilfed.augment.registry import (
    AUGMENTATIONS,
    Augmentation,
    Compose,
    Sample,
    build_augmentations,
)

__all__ = ["AUGMENTATIONS", "Augmentation", "Compose", "Sample", "build_augmentations"]
