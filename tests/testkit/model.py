"""Test helpers: tiny random batches that follow docs/contracts.md exactly, tiny model configs."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from veilfed.centralized import baseline_batches, loaders
from veilfed.compress import match_outputs
from veilfed.config import ModelSection, parse_config
from veilfed.data import schema
from veilfed.metrics import fit_baselines
from veilfed.model import create_model
from veilfed.model.check import example_batch
from veilfed.model.saved import save_dir
from veilfed.train import train_steps

B, T, H, W = 4, 4, 32, 32


def make_batch(
    b: int = B, t: int = T, h: int = H, w: int = W, seed: int = 0, tasks: Any = None
) -> dict[str, Any]:
    return example_batch(b, t, h, w, seed=seed, tasks=tasks)


# A declared task per head kind: the synthetic preset's where it has one.
KIND_TASKS: dict[str, tuple[str, Any]] = {
    str(p["kind"]): (name, 1.0) for name, p in reversed(schema.SYNTHETIC_TASKS.items())
} | {"multilabel": ("tags", {"kind": "multilabel", "classes": ["day", "night", "indoor"]})}


def learnable_batch() -> dict[str, Any]:
    """A fixed batch whose dense targets have structure a small model can fit (random per-pixel
    labels or noise could not be): smooth clips, blocky masks, binary keyframes."""
    b = make_batch()
    g = torch.Generator().manual_seed(1)
    low = torch.rand(B * T, 3, 4, 4, generator=g)
    clean = F.interpolate(low, size=(H, W), mode="bilinear", align_corners=False)
    clean = clean.view(B, T, 3, H, W)
    b["targets"]["clean"] = clean
    b["video"] = clean * 0.6 + 0.2  # low contrast: restoration must undo it
    last = clean[:, -1:] * 0.5
    b["targets"]["next_frames"] = last.expand(B, schema.NEXT_FRAMES, 3, H, W).contiguous()
    seg = torch.randint(0, len(schema.OBJECT_CLASSES) + 1, (B * T, 1, 4, 4), generator=g)
    seg = F.interpolate(seg.float(), size=(H, W), mode="nearest").long()
    b["targets"]["segmentation"] = seg.view(B, T, H, W)
    b["targets"]["keyframes"] = (torch.rand(B, T, generator=g) > 0.5).float()
    return b


def tiny(**overrides: Any) -> ModelSection:
    """A small model config for tests (dim 32)."""
    return ModelSection(**({"dim": 32, "pixel_dim": 32} | overrides))


# One task of every head kind, plus a declared classification task of the owner's own classes.
EVERY_KIND: dict[str, Any] = {name: value for name, value in KIND_TASKS.values()} | {
    "scene": {"kind": "classification", "classes": ["cartoon", "street"]}
}


def save_every_kind_model(folder: Any) -> Any:
    """An untrained model of :data:`EVERY_KIND` saved as ``log_model`` saves one (8 frames of
    32x32 at 8 fps); its directory."""
    table = {"world": {"frames": 8, "size": 32}, "model": {"dim": 32, "pixel_dim": 32}}
    table["model"]["tasks"] = EVERY_KIND
    cfg = parse_config(table, "every-kind")
    return save_dir(folder, create_model(cfg), cfg)


def trained_tiny(config: Any, epochs: int = 3) -> tuple[Any, Any, Any, Any, Any]:
    """(cfg, a model trained ``epochs`` passes on ``config``'s synthetic clips in eval mode,
    its training and held-out loaders, baselines fitted on the training clips): a teacher with
    something to teach compression."""
    train, test, _ = loaders(config)
    torch.manual_seed(1)
    model = create_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    train_steps(model, train, optimizer, epochs=epochs)
    model.eval()
    return config, model, train, test, fit_baselines(model.task_specs, baseline_batches(train))


def output_gap(student: Any, teacher: Any, loader: Any) -> float:
    """Mean output MSE (``veilfed.compress.match_outputs``) between two models over ``loader``."""
    student.eval()
    with torch.no_grad():
        gaps = [float(match_outputs(student(b), teacher(b))) for b in loader]
    return sum(gaps) / len(gaps)
