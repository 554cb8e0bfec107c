"""The multi-task model built from config: encoders -> fusion -> head set(s) -> per-task outputs.

Used unchanged by centralized training, federated simulation and client nodes. Forward takes the
collated batch dict (docs/contracts.md) and keeps batch as dim 0 everywhere, so Opacus'
GradSampleModule (hooks or ghost clipping) wraps it directly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from veilfed.data import schema
from veilfed.errors import UsageError
from veilfed.model.fusion.base import FusionOutput, View
from veilfed.model.heads.base import Head, HeadInput
from veilfed.model.heads.pixels import PixelDecoder
from veilfed.model.registry import ENCODERS, FUSIONS, HEADS, LOSSES
from veilfed.tasks import TaskSpec


class HeadSet(nn.Module):
    """All task heads for one fused view, plus the view's grid conditioning and pixel decoder."""

    def __init__(
        self,
        tasks: dict[str, TaskSpec],
        dim: int,
        pixel_dim: int,
        strides: tuple[int, int, int] | None,
        head_kwargs: dict[str, dict[str, Any]],
        vocab_size: int,
    ) -> None:
        super().__init__()
        geometry: dict[str, Any] = {"pixel_dim": pixel_dim, "vocab_size": vocab_size}
        if strides is not None:
            geometry |= {"tp": strides[0], "patch": strides[1]}
        self.heads = nn.ModuleDict(
            {
                t: HEADS.build(spec.kind, dim=dim, spec=spec, **(geometry | head_kwargs.get(t, {})))
                for t, spec in tasks.items()
            }
        )
        uses_pixels = any(h.uses_pixels for h in self.heads.values())
        uses_grid = uses_pixels or any(h.uses_grid for h in self.heads.values())
        self.cond = nn.Linear(dim, dim) if strides is not None and uses_grid else None
        self.decoder = PixelDecoder(dim, pixel_dim) if uses_pixels else None

    def forward(self, view: View, batch: dict[str, Any]) -> tuple[dict[str, Any], HeadInput]:
        grid = None
        if view.grid is not None and self.cond is not None:
            grid = view.grid + self.cond(view.pooled)[:, None, None, None, :]
        pixels = self.decoder(grid) if self.decoder is not None and grid is not None else None
        inp = HeadInput(view=view, grid=grid, pixels=pixels, batch=batch)
        return {t: head(inp) for t, head in self.heads.items()}, inp


def _combine(outputs: list[Any], weights: Tensor) -> Any:
    """Weighted average over views of (dicts of) tensors with batch dim 0."""
    first = outputs[0]
    if isinstance(first, dict):
        return {k: _combine([o[k] for o in outputs], weights) for k in first}
    total = torch.zeros_like(first)
    for i, out in enumerate(outputs):
        w = weights[:, i].reshape(-1, *([1] * (out.dim() - 1)))
        total = total + w * out
    return total


class MultiTaskModel(nn.Module):
    """``model(batch) -> {task: output}``; ``model.loss(outputs, batch) -> (total, {task: loss})``.

    Outputs follow the formats :mod:`veilfed.metrics` reads; :meth:`predict` gives each head's
    evaluation output (its ``predict`` of the output, or its ``generate`` over every view).
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        from veilfed.data.text import Tokenizer

        self.config = cfg
        dim = cfg.dim
        self.modalities = tuple(m for m in schema.MODALITIES if cfg.encoders.get(m))
        if not self.modalities:
            raise UsageError("model.encoders: configure at least one encoder")
        self.encoders = nn.ModuleDict()
        for m in self.modalities:
            kwargs = {"dim": dim} | cfg.encoder_kwargs.get(m, {})
            if m == "text":
                kwargs.setdefault("vocab_size", cfg.vocab_size)
            self.encoders[m] = ENCODERS.build(cfg.encoders[m], **kwargs)
        self.task_specs = cfg.task_specs()
        self.tasks = tuple(self.task_specs)
        for spec in self.task_specs.values():
            missing = [r for r in HEADS.get(spec.kind).requires if r not in self.modalities]
            if missing:
                raise UsageError(
                    f"task {spec.name!r} ({spec.kind}) needs the {', '.join(missing)} encoder; "
                    f"set model.encoders.{missing[0]}"
                )
        self.fusion = FUSIONS.build(
            cfg.fusion, modalities=self.modalities, dim=dim, **cfg.fusion_kwargs
        )
        strides = None
        if "video" in self.encoders:
            enc = self.encoders["video"]
            strides = (enc.t_stride, enc.spatial_stride, enc.spatial_stride)
        views = len(self.modalities) if self.fusion.num_views_per_modality else 1
        vocab = cfg.vocab_size or Tokenizer().vocab_size
        self.head_sets = nn.ModuleList(
            HeadSet(self.task_specs, dim, cfg.pixel_dim, strides, cfg.head_kwargs, vocab)
            for _ in range(views)
        )
        weights = tuple(spec.weight for spec in self.task_specs.values())
        self.weighting = LOSSES.build(
            cfg.loss_weighting, tasks=self.tasks, weights=weights, **cfg.loss_kwargs
        )
        self._fused: FusionOutput | None = None
        self._inputs: list[HeadInput] = []

    # -- forward -----------------------------------------------------------------------------
    def _check_batch(self, batch: dict[str, Any]) -> None:
        for m in self.modalities:
            if m not in batch:
                raise UsageError(
                    f"batch lacks {m!r} (configured encoder {self.config.encoders[m]})"
                )
        expected = {"video": (5, "[B, T, 3, H, W]"), "audio": (2, "[B, S]"), "text": (2, "[B, L]")}
        for m in self.modalities:
            dims, shape = expected[m]
            x = batch[m]
            if x.dim() != dims or (m == "video" and x.shape[2] != 3):
                raise UsageError(f"batch {m}: expected {shape}, got {list(x.shape)}")

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        self._check_batch(batch)
        encoded = {m: self.encoders[m](batch[m]) for m in self.modalities}
        if "video" in encoded:
            frames, t_stride = batch["video"].shape[1], self.encoders["video"].t_stride
            if encoded["video"].grid.shape[1] * t_stride != frames:
                raise UsageError(
                    f"batch video has {frames} frames; the {self.config.encoders['video']} "
                    f"encoder needs a multiple of {t_stride}"
                )
        mask = batch["modality_mask"]
        present = {m: mask[:, schema.MODALITIES.index(m)].bool() for m in self.modalities}
        fused = self.fusion(encoded, present)
        outs, inputs = [], []
        for head_set, view in zip(self.head_sets, fused.views, strict=True):
            out, inp = head_set(view, batch)
            outs.append(out)
            inputs.append(inp)
        self._fused, self._inputs = fused, inputs
        if len(outs) == 1:
            return outs[0]
        return {t: _combine([o[t] for o in outs], fused.weights) for t in self.tasks}

    def attention_maps(self) -> dict[str, Tensor]:
        """The last forward's fusion attention / modality weights (detached), for visualization."""
        if self._fused is None:
            return {}
        return {k: v.detach() for k, v in self._fused.attention.items()}

    # -- losses ------------------------------------------------------------------------------
    def task_heads(self) -> dict[str, Head]:
        """Each task's head (of the first view: every view's head set has the same heads)."""
        return dict(self.head_sets[0].heads.items())

    def per_sample_loss(
        self, outputs: dict[str, Any], batch: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-sample weighted total [B] and each task's mean loss over its labelled samples."""
        targets, tmask = batch["targets"], batch.get("target_mask", {})
        columns, per_task = [], {}
        for task, head in self.task_heads().items():
            loss = head.loss(outputs[task], targets)
            labelled = tmask.get(task)
            if labelled is not None:
                labelled = labelled.to(loss.device).bool()
                loss = torch.where(labelled, loss, torch.zeros_like(loss))
                per_task[task] = loss.sum() / labelled.sum().clamp(min=1)
            else:
                per_task[task] = loss.mean()
            columns.append(loss)
        return self.weighting(torch.stack(columns, dim=1)), per_task

    def loss(
        self, outputs: dict[str, Any], batch: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Batch-mean total loss and per-task losses (unlabelled samples masked out)."""
        total, per_task = self.per_sample_loss(outputs, batch)
        return total.mean(), per_task

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self, batch: dict[str, Any], outputs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Evaluation outputs: each head's ``predict`` of ``outputs`` (the forward of ``batch``,
        run here if not given), or for a generative head its ``generate`` over every view."""
        if outputs is None:
            outputs = self(batch)
        preds = {}
        for task, head in self.task_heads().items():
            if not head.generative:
                preds[task] = head.predict(outputs[task])
                continue
            views = [
                (hs.heads[task], inp) for hs, inp in zip(self.head_sets, self._inputs, strict=True)
            ]
            weights = self._fused.weights if len(views) > 1 else None
            preds[task] = head.generate(views, weights)
        return preds


class MultiTaskCriterion:
    """The model's loss as an Opacus criterion: ``reduction="none"`` gives per-sample losses, which
    ghost clipping (``DPLossFastGradientClipping``) needs. ``last_task_losses`` keeps the per-task
    losses of the latest call for logging."""

    def __init__(self, model: MultiTaskModel, reduction: str = "mean") -> None:
        self.model = model
        self.reduction = reduction
        self.last_task_losses: dict[str, Tensor] = {}

    def __call__(self, outputs: dict[str, Any], batch: dict[str, Any]) -> Tensor:
        total, self.last_task_losses = self.model.per_sample_loss(outputs, batch)
        if self.reduction == "none":
            return total
        return total.sum() if self.reduction == "sum" else total.mean()


def create_model(config: Any) -> MultiTaskModel:
    """Build the model from an ``ExperimentConfig`` or its ``ModelSection``."""
    return MultiTaskModel(getattr(config, "model", config))
