"""``veilfed model check``: Opacus validation and one DP-SGD step per encoder x fusion combination.

The example batch follows docs/contracts.md exactly (random values, real shapes and dtypes), so
the check needs no dataset and runs anywhere in seconds.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from veilfed.config import ModelSection
from veilfed.data import schema
from veilfed.data.text import BOS, EOS, PAD, Tokenizer
from veilfed.model.core import create_model
from veilfed.model.registry import ENCODERS, FUSIONS, HEADS
from veilfed.tasks import TaskSpec


def example_batch(
    b: int = 4,
    t: int = 4,
    h: int = 32,
    w: int = 32,
    seed: int = 0,
    vocab: int | None = None,
    tasks: Mapping[str, TaskSpec] | None = None,
) -> dict[str, Any]:
    """A random batch with the exact keys, dtypes and shapes of ``veilfed.data.dataset.collate``:
    every synthetic preset task's targets, plus those of the declared ``tasks`` the preset does
    not have (every task labelled)."""
    g = torch.Generator().manual_seed(seed)
    vocab = vocab or Tokenizer().vocab_size
    s = t * schema.SAMPLE_RATE // schema.DEFAULT_FPS
    o, p, q = schema.MAX_OBJECTS, len(schema.KEYPOINTS), len(schema.QA_TYPES)
    xy = torch.rand(b, t, o, 2, generator=g) * 0.6
    boxes = torch.cat([xy, xy + 0.1 + 0.3 * torch.rand(b, t, o, 2, generator=g)], dim=-1)
    classes = torch.randint(0, len(schema.OBJECT_CLASSES), (b, t, o), generator=g)
    classes[:, :, -1] = -1
    caption = torch.randint(4, vocab, (b, schema.MAX_CAPTION_TOKENS), generator=g)
    caption[:, 0], caption[:, 8], caption[:, 9:] = BOS, EOS, PAD
    text = torch.randint(4, vocab, (b, schema.MAX_TEXT_TOKENS), generator=g)
    text[:, 12:] = PAD
    clean = torch.rand(b, t, 3, h, w, generator=g)
    targets = {
        "action": torch.randint(0, len(schema.ACTIONS), (b,), generator=g),
        "sentiment": torch.randint(0, len(schema.SENTIMENTS), (b,), generator=g),
        "moderation": torch.randint(0, 2, (b,), generator=g).float(),
        "quality": torch.rand(b, generator=g),
        "boxes": boxes,
        "box_classes": classes,
        "segmentation": torch.randint(0, len(schema.OBJECT_CLASSES) + 1, (b, t, h, w), generator=g),
        "keypoints": torch.rand(b, t, p, 2, generator=g),
        "keypoint_visible": torch.rand(b, t, p, generator=g) > 0.2,
        "caption": caption,
        "questions": torch.randint(4, vocab, (b, q, schema.MAX_QUESTION_TOKENS), generator=g),
        "answers": torch.randint(0, len(schema.ANSWERS), (b, q), generator=g),
        "keyframes": torch.rand(b, t, generator=g),
        "clean": clean,
        "next_frames": torch.rand(b, schema.NEXT_FRAMES, 3, h, w, generator=g),
    }
    for spec in (tasks or {}).values():
        if not all(k in targets for k in spec.keys):
            targets |= example_targets(spec, b, t, h, w, g, vocab)
    names = [*schema.TASKS, *(tasks or {})]
    return {
        "clip_id": [f"example{i}" for i in range(b)],
        "video": (clean + 0.1 * torch.randn(b, t, 3, h, w, generator=g)).clamp(0, 1),
        "audio": torch.rand(b, s, generator=g) * 2 - 1,
        "text": text,
        "modality_mask": torch.ones(b, 3, dtype=torch.bool),
        "targets": targets,
        "target_mask": {task: torch.ones(b, dtype=torch.bool) for task in names},
    }


def example_targets(
    spec: TaskSpec, b: int, t: int, h: int, w: int, g: torch.Generator, vocab: int
) -> dict[str, torch.Tensor]:
    """Random targets of one declared task in its kind's shapes (docs/contracts.md)."""
    n, o = len(spec.classes), spec.options
    if spec.kind == "classification":
        made = {"target": torch.randint(0, n, (b,), generator=g)}
    elif spec.kind in ("binary", "regression"):
        lo, hi = o.get("range", [0.0, 1.0])
        value = torch.rand(b, generator=g)
        made = {"target": value.round() if spec.kind == "binary" else lo + (hi - lo) * value}
    elif spec.kind == "multilabel":
        made = {"target": (torch.rand(b, n, generator=g) > 0.5).float()}
    elif spec.kind == "detection":
        xy = torch.rand(b, t, o["slots"], 2, generator=g) * 0.6
        made = {
            "boxes": torch.cat([xy, xy + 0.2], dim=-1),
            "classes": torch.randint(-1, n, (b, t, o["slots"]), generator=g),
        }
    elif spec.kind == "segmentation":
        made = {"target": torch.randint(0, n + 1, (b, t, h, w), generator=g)}
    elif spec.kind == "keypoints":
        made = {
            "points": torch.rand(b, t, n, 2, generator=g),
            "visible": torch.rand(b, t, n, generator=g) > 0.2,
        }
    elif spec.kind == "caption":
        caption = torch.randint(4, vocab, (b, o["max_len"]), generator=g)
        caption[:, 0], caption[:, -1] = BOS, EOS
        made = {"target": caption}
    elif spec.kind == "qa":
        q = o["questions"]
        made = {
            "questions": torch.randint(4, vocab, (b, q, schema.MAX_QUESTION_TOKENS), generator=g),
            "answers": torch.randint(0, n, (b, q), generator=g),
        }
    elif spec.kind == "frame_scores":
        made = {"target": torch.rand(b, t, generator=g)}
    elif spec.kind == "restoration":
        made = {"target": torch.rand(b, t, 3, h, w, generator=g)}
    else:
        made = {"target": torch.rand(b, o["frames"], 3, h, w, generator=g)}
    return {spec.key(f): v for f, v in made.items()}


class OneBatchDataset(torch.utils.data.Dataset):
    """Samples of one example batch, so Opacus can wrap an ordinary DataLoader."""

    def __init__(self, batch: dict[str, Any]) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch["clip_id"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        def pick(x: Any) -> Any:
            return {k: pick(v) for k, v in x.items()} if isinstance(x, dict) else x[i]

        return pick(self.batch)


def stack_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate samples of :class:`OneBatchDataset` back into a batch."""
    first = samples[0]
    out: dict[str, Any] = {}
    for k, v in first.items():
        if isinstance(v, dict):
            out[k] = stack_samples([s[k] for s in samples])
        elif isinstance(v, torch.Tensor):
            out[k] = torch.stack([s[k] for s in samples])
        else:
            out[k] = [s[k] for s in samples]
    return out


@dataclass
class CheckResult:
    name: str
    ok: bool
    error: str = ""
    params: int = 0


def combinations(base: ModelSection, everything: bool) -> Iterator[tuple[str, ModelSection]]:
    """(label, model config) per encoder x fusion combination, every head its encoders allow.

    Without ``everything``: the base config's encoders with every fusion.
    """
    per_modality: list[list[str]] = []
    for m in schema.MODALITIES:
        if not base.encoders.get(m):
            per_modality.append([""])
        elif everything:
            per_modality.append([n for n in ENCODERS.names() if ENCODERS.get(n).modality == m])
        else:
            per_modality.append([base.encoders[m]])
    for encs, fusion in itertools.product(itertools.product(*per_modality), FUSIONS.names()):
        encoders = dict(zip(schema.MODALITIES, encs, strict=True))
        if not all(encoders.get(r) for r in FUSIONS.get(fusion).requires):
            continue
        tasks = {
            name: base.tasks[name]
            for name, spec in base.task_specs().items()
            if all(encoders.get(r) for r in HEADS.get(spec.kind).requires)
        }
        label = "+".join(e for e in encs if e) + f"/{fusion}"
        yield label, replace(base, encoders=encoders, fusion=fusion, tasks=tasks)


def check_one(cfg: ModelSection, mode: str = "hooks", frames: int = 8, size: int = 32) -> int:
    """Validate and take one DP-SGD step; raises on failure, returns the parameter count."""
    from opacus.validators import ModuleValidator

    from veilfed.train import make_private, train_steps

    torch.manual_seed(0)
    model = create_model(cfg)
    model.train()
    ModuleValidator.validate(model, strict=True)
    batch = example_batch(2, frames, size, size, tasks=cfg.task_specs())
    loader = torch.utils.data.DataLoader(
        OneBatchDataset(batch), batch_size=2, collate_fn=stack_samples
    )
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    private, opt, loader, privacy = make_private(
        model,
        opt,
        loader,
        noise_multiplier=0.5,
        max_grad_norm=1.0,
        mode=mode,
        poisson_sampling=False,
    )
    stats = train_steps(private, loader, opt, steps=1, privacy=privacy)
    if not torch.isfinite(torch.tensor(stats.loss)):
        raise RuntimeError(f"loss is {stats.loss}")
    params = list(model.parameters())
    if any(not torch.isfinite(p).all() for p in params):
        raise RuntimeError("non-finite parameters after the DP step")
    unchanged = sum(1 for a, p in zip(before, params, strict=True) if torch.equal(a, p))
    if unchanged:
        raise RuntimeError(f"{unchanged} parameter tensors not updated by the DP step")
    return sum(p.numel() for p in params)


def run_checks(base: ModelSection, everything: bool, mode: str = "hooks") -> list[CheckResult]:
    results = []
    for label, cfg in combinations(base, everything):
        try:
            params = check_one(cfg, mode)
            results.append(CheckResult(label, True, params=params))
        except Exception as exc:  # report every failure by combination, never a traceback
            msg = " ".join(str(exc).split())[:300] or type(exc).__name__
            results.append(CheckResult(label, False, f"{type(exc).__name__}: {msg}"))
    return results
