"""What every encoder returns, so fusions and heads never depend on a particular encoder."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass
class Encoded:
    """One modality's features.

    ``tokens`` [B, L, D] feed attention fusions and token-level heads; ``pooled`` [B, D] feeds
    pooled fusions; ``grid`` [B, T', H', W', D] (video only, channels-last) feeds dense heads.
    """

    tokens: Tensor
    pooled: Tensor
    token_mask: Tensor | None = None
    grid: Tensor | None = None


class Encoder(nn.Module):
    """Base: ``modality`` says which batch key it reads; ``dim`` is its output width."""

    modality: str = ""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def prunable_widths(self) -> dict[str, list[nn.Module]]:
        """``{constructor argument: layers}``: a width internal to this encoder (not ``dim``)
        and the conv/linear layers whose output channels have it. Removing the same number of
        channels from each (and what consumes them) gives the encoder built with that argument
        smaller (``veilfed.inference.prune``). None by default."""
        return {}
