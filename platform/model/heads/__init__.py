"""Task heads, one per head kind (``veilfed.tasks.KINDS``); each module here registers in HEADS."""

from veilfed.model.heads.base import Head, HeadInput
from veilfed.model.heads.pixels import PixelDecoder
from veilfed.registry import import_submodules

import_submodules(__name__)

__all__ = ["Head", "HeadInput", "PixelDecoder"]
