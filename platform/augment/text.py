"""Transcript augmentation: token dropout on the ``text`` input (never on caption targets)."""

from __future__ import annotations

import torch

from veilfed.augment.registry import AUGMENTATIONS, Augmentation, Sample, present
from veilfed.data.schema import MODALITIES
from veilfed.data.text import PAD
from veilfed.errors import UsageError

_TEXT = MODALITIES.index("text")


@AUGMENTATIONS.register("token_dropout")
class TokenDropout(Augmentation):
    """Replace each non-PAD token by PAD with probability ``rate``.

    The tokenizer has no UNK id; PAD is what the text encoder already ignores, so a dropped token
    is simply absent — the model must not rely on any single word.
    """

    def __init__(self, rate: float = 0.1, p: float = 0.5) -> None:
        super().__init__(p)
        if not 0 <= rate <= 1:
            raise UsageError(f"augmentation token_dropout: rate={rate} must be in [0, 1]")
        self.rate = rate

    def apply(self, sample: Sample) -> Sample:
        if present(sample, _TEXT):
            text = sample["text"]
            drop = (torch.rand(text.shape) < self.rate) & (text != PAD)
            sample["text"] = text.masked_fill(drop, PAD)
        return sample
