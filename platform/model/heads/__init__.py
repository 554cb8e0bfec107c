"""Task heads, one per task of the synthetic world; importing registers them in ``HEADS``."""

from veilfed.model.heads import clip, dense, language, pixels  # noqa: F401  (registration)
from veilfed.model.heads.base import Head, HeadInput
from veilfed.model.heads.pixels import PixelDecoder

__all__ = ["Head", "HeadInput", "PixelDecoder"]
