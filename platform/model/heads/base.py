"""Head interface and the dense-prediction helpers several heads share.

A head maps a fused :class:`View` to its task's output in the format :mod:`veilfed.metrics` reads
(logits, [0, 1] scores, boxes, pixels), and ``loss`` turns that output into a per-sample loss [B]
so the model can mask unlabelled samples and Opacus ghost clipping can reweight samples.

A head also declares what evaluation needs from it, so the model core and the evaluation loop
treat every head alike: ``predict`` (or, for a ``generative`` head, ``generate`` over every fused
view) gives the evaluation output, and ``metric`` the accumulator that scores it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from veilfed.metrics import TaskMetric, build_metric
from veilfed.model.fusion.base import View
from veilfed.model.layers import flat_apply
from veilfed.tasks import TaskSpec


@dataclass
class HeadInput:
    """A view plus what some heads read from the batch (input clip, questions, caption prefix)."""

    view: View
    grid: Tensor | None  # video grid conditioned on the view's pooled vector [B, T', H', W', D]
    pixels: Tensor | None  # shared pixel-decoder features [B, T', H', W', Dp]
    batch: dict[str, Any]

    @property
    def frames(self) -> int:
        return self.batch["video"].shape[1]

    def input_video(self) -> Tensor:
        """The input clip, zeroed for samples whose video is missing."""
        present = self.batch["modality_mask"][:, 0].to(self.batch["video"].dtype)
        return self.batch["video"] * present[:, None, None, None, None]


class Head(nn.Module):
    """Base head of one kind (registered in ``HEADS`` under a key of ``veilfed.tasks.KINDS``),
    built for one declared task: ``spec`` gives its name, label space, options and target keys.

    ``requires``: encoders it needs; ``uses_grid`` / ``uses_pixels``: reads the video grid / the
    pixel decoder (a head set builds them only for heads that read them: a module no head reads
    gets no gradient, which Opacus refuses); ``generative``: its
    evaluation output is decoded step by step (:meth:`generate`) instead of read off the forward
    output (:meth:`predict`)."""

    requires: tuple[str, ...] = ()
    uses_grid = False  # reads the conditioned video grid (HeadInput.grid)
    uses_pixels = False  # reads the shared pixel decoder's features (implies the grid)
    generative = False
    clip_level = False  # one output per clip: windows of a video are averaged (metrics.videos)

    def __init__(self, dim: int, spec: TaskSpec, **_: Any) -> None:
        super().__init__()
        self.dim = dim
        self.spec = spec
        self.task = spec.name

    def target(self, targets: dict[str, Tensor], name: str = "target") -> Tensor:
        """This task's target field ``name`` of a batch's ``targets``."""
        return targets[self.spec.key(name)]

    def forward(self, inp: HeadInput) -> Any:
        raise NotImplementedError

    def loss(self, output: Any, targets: dict[str, Tensor]) -> Tensor:
        """Per-sample loss [B] (unmasked; the model applies ``target_mask``)."""
        raise NotImplementedError

    def predict(self, output: Any) -> Any:
        """Output in the metrics format, for evaluation (e.g. pixels clamped to [0, 1])."""
        return output

    def generate(self, views: Sequence[tuple[Head, HeadInput]], weights: Tensor | None) -> Any:
        """A generative head's evaluation output in the metrics format. ``views``: this task's
        head and its input for every fused view (the first is ``self``); ``weights``: the
        fusion's per-sample vote [B, len(views)] when there are several views, else None."""
        raise NotImplementedError

    def metric(self) -> TaskMetric:
        """A fresh accumulator of this head's evaluation metrics (its kind's by default)."""
        return build_metric(self.spec)


def per_sample_mean(x: Tensor) -> Tensor:
    """Mean over every dim but the batch dim."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def sub_frames(x: Tensor, tp: int) -> Tensor:
    """[B, T', H', W', tp * X] -> [B, T' * tp, H' * W', X]: per-token outputs for tp frames each."""
    b, t, h, w, c = x.shape
    x = x.view(b, t, h * w, tp, c // tp).permute(0, 1, 3, 2, 4)
    return x.reshape(b, t * tp, h * w, c // tp)


def unpatchify(x: Tensor, tp: int, ph: int, pw: int, channels: int) -> Tensor:
    """[B, T', H', W', tp*ph*pw*C] -> [B, T'*tp, C, H'*ph, W'*pw] (each token paints its patch)."""
    b, t, h, w, _ = x.shape
    x = x.view(b, t, h, w, tp, channels, ph, pw).permute(0, 1, 4, 5, 2, 6, 3, 7)
    return x.reshape(b, t * tp, channels, h * ph, w * pw)


def cell_centers(h: int, w: int, device: torch.device) -> Tensor:
    """Normalised (x, y) centers of an h x w grid, [h * w, 2] in row-major order."""
    ys = (torch.arange(h, device=device) + 0.5) / h
    xs = (torch.arange(w, device=device) + 0.5) / w
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)


class SlotPool(nn.Module):
    """Per frame, ``slots`` learned spatial softmaxes over the grid: a soft-argmax location
    (normalised x, y) and an attention-pooled feature per slot."""

    def __init__(self, dim: int, slots: int, tp: int) -> None:
        super().__init__()
        self.slots, self.tp = slots, tp
        self.logits = nn.Linear(dim, tp * slots)

    def forward(self, grid: Tensor) -> tuple[Tensor, Tensor]:
        b, t, h, w, d = grid.shape
        attn = torch.softmax(
            sub_frames(flat_apply(self.logits, grid), self.tp), dim=2
        )  # [B, T, HW, S]
        feats = grid.reshape(b, t, 1, h * w, d).expand(b, t, self.tp, h * w, d)
        feats = feats.reshape(b, t * self.tp, h * w, d)
        pooled = torch.einsum("btls,btld->btsd", attn, feats)
        centers = torch.einsum("btls,lc->btsc", attn, cell_centers(h, w, grid.device))
        return centers, pooled
