"""Fusion strategies; importing registers them in ``FUSIONS``."""

from veilfed.model.fusion import (  # noqa: F401  (registration)
    concat,
    cross_attention,
    gated,
    transformer,
    vote,
)
from veilfed.model.fusion.base import Fusion, FusionOutput, View

__all__ = ["Fusion", "FusionOutput", "View"]
