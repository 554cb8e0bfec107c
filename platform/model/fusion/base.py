"""Fusion interface: encoded modalities + presence mask -> one or more fused views for the heads.

Early/intermediate fusions return one view. Model-level fusion (``vote``) returns one view per
modality plus per-sample voting weights; the model then runs a head set per view and combines
their predictions. Missing modalities are handled through ``present`` masks, never by branching
on data, so batch shapes stay fixed (Opacus needs that).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from veilfed.errors import UsageError
from veilfed.model.encoders.base import Encoded


@dataclass
class View:
    """What heads read: pooled [B, D], tokens [B, L, D] + mask [B, L], video grid or None."""

    pooled: Tensor
    tokens: Tensor
    token_mask: Tensor
    grid: Tensor | None


@dataclass
class FusionOutput:
    views: list[View]
    weights: Tensor | None = None  # [B, len(views)], rows sum to 1 over present views
    attention: dict[str, Tensor] = field(default_factory=dict)


class Fusion(nn.Module):
    """Base: ``modalities`` are the configured ones in ``schema.MODALITIES`` order."""

    requires: tuple[str, ...] = ()
    num_views_per_modality = False

    def __init__(self, modalities: tuple[str, ...], dim: int) -> None:
        super().__init__()
        missing = [m for m in self.requires if m not in modalities]
        if missing:
            raise UsageError(
                f"fusion {type(self).__name__}: needs the {', '.join(missing)} encoder; "
                f"configured modalities: {', '.join(modalities)}"
            )
        self.modalities = modalities
        self.dim = dim

    def prunable_widths(self) -> dict[str, list[nn.Module]]:
        """As :meth:`veilfed.model.encoders.base.Encoder.prunable_widths`, for
        ``[model.fusion_kwargs]``; none by default."""
        return {}

    def forward(self, encoded: dict[str, Encoded], present: dict[str, Tensor]) -> FusionOutput:
        raise NotImplementedError


def token_mask(enc: Encoded, present: Tensor) -> Tensor:
    """Token mask [B, L]: the encoder's own (PAD) mask and'ed with modality presence [B]."""
    b, length = enc.tokens.shape[:2]
    mask = present[:, None].expand(b, length)
    return mask & enc.token_mask if enc.token_mask is not None else mask


def joint_tokens(
    encoded: dict[str, Encoded], present: dict[str, Tensor], modalities: tuple[str, ...]
) -> tuple[Tensor, Tensor, Tensor]:
    """All modalities' tokens side by side: tokens [B, L, D], mask [B, L], modality ids [B, L]."""
    tokens = torch.cat([encoded[m].tokens for m in modalities], dim=1)
    mask = torch.cat([token_mask(encoded[m], present[m]) for m in modalities], dim=1)
    ids = torch.cat(
        [
            torch.full(encoded[m].tokens.shape[:2], i, device=tokens.device, dtype=torch.long)
            for i, m in enumerate(modalities)
        ],
        dim=1,
    )
    return tokens, mask, ids


def presence(present: dict[str, Tensor], modalities: tuple[str, ...]) -> Tensor:
    """[B, M] float presence in ``modalities`` order."""
    return torch.stack([present[m] for m in modalities], dim=1).to(torch.float32)


def masked_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    """Softmax over present entries; all-missing rows give zeros instead of NaN."""
    return torch.softmax(logits.masked_fill(mask <= 0, float("-inf")), dim=-1).nan_to_num(0.0)


def video_grid(encoded: dict[str, Encoded], present: dict[str, Tensor]) -> Tensor | None:
    """The video grid, zeroed for samples without video so dense heads never read a blank clip."""
    if "video" not in encoded or encoded["video"].grid is None:
        return None
    return (
        encoded["video"].grid
        * present["video"].to(encoded["video"].grid.dtype)[:, None, None, None, None]
    )
