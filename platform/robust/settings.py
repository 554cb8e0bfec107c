"""``[train] adversarial``: PGD adversarial training, off unless the table is given.

::

    [train]
    adversarial = { eps = 0.03, steps = 3, modality = "video" }   # modality: video | audio | all

``eps`` is the L∞ radius in each attacked input's own units (pixels in [0, 1], audio samples in
[-1, 1]) and must be > 0 and finite; ``steps`` (>= 1, default 3) PGD iterations of
``2.5 · eps / steps`` from a random start; ``modality`` (default ``all``: every attackable input
the model encodes) what is perturbed. A bad value is a one-line error naming
``train.adversarial.<field>``; a modality the model has no encoder for, or a model without an
attackable task, is refused by :func:`check_model` when the whole config is validated, so a run
never starts with a setting it cannot apply. What training does with it:
:mod:`veilfed.robust.training`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from veilfed.errors import UsageError
from veilfed.tables import typed_fields

ATTACK_MODALITIES = ("video", "audio")  # what an L∞ attack can perturb (continuous inputs)
MODALITY_CHOICES = (*ATTACK_MODALITIES, "all")
ATTACKABLE_KINDS = ("classification", "binary", "multilabel")


@dataclass(frozen=True)
class AdversarialSettings:
    """The ``[train] adversarial`` table (module docstring)."""

    eps: float
    steps: int = 3
    modality: str = "all"

    @classmethod
    def from_dict(cls, data: Any, where: str = "train.adversarial") -> AdversarialSettings:
        """Type-checked and validated settings; errors name ``where.field``."""
        if isinstance(data, dict) and "eps" not in data:
            raise UsageError(f"{where}.eps: give the L-inf radius (> 0, in input units)")
        settings = cls(**typed_fields(cls, data, where))
        settings.validate(where)
        return settings

    def validate(self, where: str = "train.adversarial") -> None:
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise UsageError(f"{where}.eps: must be > 0 and finite (got {self.eps})")
        if self.steps < 1:
            raise UsageError(f"{where}.steps: must be >= 1 (got {self.steps})")
        if self.modality not in MODALITY_CHOICES:
            raise UsageError(
                f"{where}.modality: {self.modality!r}; valid: {', '.join(MODALITY_CHOICES)}"
            )


def check_model(
    settings: AdversarialSettings | None,
    encoders: Iterable[str],
    specs: Mapping[str, Any],
    where: str = "train.adversarial",
) -> None:
    """``settings`` applicable to a model encoding ``encoders`` with tasks ``specs``: it reads
    the attacked modality and has a task of an attackable kind (the attack's objective)."""
    if settings is None:
        return
    encoded = [m for m in encoders if m in ATTACK_MODALITIES]
    wanted = ATTACK_MODALITIES if settings.modality == "all" else (settings.modality,)
    if not any(m in encoded for m in wanted):
        raise UsageError(
            f"{where}.modality: {settings.modality!r} but the model has no "
            f"{' or '.join(wanted)} encoder; set model.encoders or another modality"
        )
    if not any(spec.kind in ATTACKABLE_KINDS for spec in specs.values()):
        raise UsageError(
            f"{where}: no task of an attackable kind ({', '.join(ATTACKABLE_KINDS)}) to attack; "
            "remove the setting"
        )
