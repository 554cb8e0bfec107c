"""Which modality decided: the target's confidence with each modality dropped.

A modality is dropped through the model's own missing-modality mask (``modality_mask``), the
path a clip without audio or transcript takes in training, so the model sees what it was
trained to see when a modality is absent, not an out-of-distribution blank. For each modality
the model has and the clip carries: the confidence without it and the drop from the full
clip's (positive: the modality supported the decision). ``decided`` names the modality whose
removal drops the confidence most, or None when no removal lowers it.
"""

from __future__ import annotations

from typing import Any

import torch

from veilfed.data import schema
from veilfed.explain.attribute import present
from veilfed.explain.target import Target


def ablate(model: Any, batch: dict[str, Any], target: Target) -> dict[str, Any]:
    """``{"full", "without": {modality: confidence}, "drop": {modality: drop}, "decided"}``."""
    model.eval()
    with torch.no_grad():
        full = float(target.confidence(model(batch))[0])
        without = {}
        for modality in present(model, batch):
            mask = batch["modality_mask"].clone()
            mask[:, schema.MODALITIES.index(modality)] = False
            without[modality] = float(target.confidence(model(batch | {"modality_mask": mask}))[0])
    drop = {m: full - v for m, v in without.items()}
    best = max(drop, key=drop.get) if drop else None
    return {
        "full": round(full, 4),
        "without": {m: round(v, 4) for m, v in without.items()},
        "drop": {m: round(v, 4) for m, v in drop.items()},
        "decided": best if best is not None and drop[best] > 0 else None,
    }
