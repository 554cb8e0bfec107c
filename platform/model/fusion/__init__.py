"""Fusion strategies; every module here registers in ``FUSIONS``."""

from veilfed.model.fusion.base import Fusion, FusionOutput, View
from veilfed.registry import import_submodules

import_submodules(__name__)

__all__ = ["Fusion", "FusionOutput", "View"]
