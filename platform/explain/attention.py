"""Attention maps of the attention fusions, as an :class:`~veilfed.explain.attribute.Attribution`.

* ``cross_attention``: each other modality's tokens attend over the video tokens; the map is
  the attention over the video grid tokens (averaged over heads, as the fusion reports it),
  over query tokens and over modalities;
* ``transformer``: the map is the summary token's attention in the last block over the video
  grid tokens (averaged over heads);
* ``gated`` and ``vote`` weigh whole modalities: they give modality weights, no map.

The video tokens are the encoder's pooled vector followed by its grid pooled to ``t' x h' x w'``
(``veilfed.model.encoders.video``); the grid part is upsampled (nearest) to the clip's frames
and pixels. Attention says where the fusion looked, not what the decision depends on: it is the
same for every task and class.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from veilfed.errors import UsageError
from veilfed.explain.attribute import Attribution
from veilfed.explain.target import Target


def _grid_shape(model: Any, video: Tensor) -> tuple[int, int, int]:
    """(t', h', w') of the video tokens after the pooled one."""
    encoder = model.encoders["video"]
    with torch.no_grad():
        enc = encoder(video)
    t, h, w = enc.grid.shape[1:4]
    side = encoder.max_tokens_side
    return t, min(h, side), min(w, side)


def _upsample(weights: Tensor, grid: tuple[int, int, int], size: tuple[int, int, int]) -> Tensor:
    volume = weights[: grid[0] * grid[1] * grid[2]].reshape(1, 1, *grid)
    return F.interpolate(volume, size=size, mode="nearest")[0, 0]


def attention_map(model: Any, batch: dict[str, Any], target: Target) -> Attribution:
    """The fusion's attention on the clip ``batch`` (module docstring)."""
    model.eval()
    with torch.no_grad():
        outputs = model(batch)
    maps = model.attention_maps()
    confidence = float(target.confidence(outputs)[0])
    fusion = type(model.fusion).__name__
    if not maps:
        raise UsageError(
            f"--method attention: the model's fusion ({fusion}) has no attention; use "
            "integrated_gradients or occlusion"
        )
    out = Attribution(target, "attention", confidence)
    if "modality_weights" in maps:
        weights = maps["modality_weights"][0].tolist()
        out.notes["modality_weights"] = {
            m: round(w, 4) for m, w in zip(model.fusion.modalities, weights, strict=True)
        }
        return out
    video = batch["video"]
    grid = _grid_shape(model, video)
    size = (video.shape[1], video.shape[3], video.shape[4])
    n = grid[0] * grid[1] * grid[2]
    # Weights come averaged over heads: [B, queries, keys].
    if "self" in maps:  # [B, 1 + L, 1 + L]: the summary token's row; video tokens come first
        weights = maps["self"][0][0, 2 : 2 + n]
    else:
        rows = [a[0].mean(dim=0)[1 : 1 + n] for k, a in maps.items() if "cross" in k]
        weights = torch.stack(rows).mean(dim=0)
    out.video = _upsample(weights.float(), grid, size)
    return out
