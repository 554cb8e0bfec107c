"""Encoders, one modality each; importing registers them in ``ENCODERS``."""

from veilfed.model.encoders import audio, text, video  # noqa: F401  (registration)
from veilfed.model.encoders.base import Encoded, Encoder

__all__ = ["Encoded", "Encoder"]
