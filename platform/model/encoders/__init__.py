"""Encoders, one modality each; every module here registers in ``ENCODERS``."""

from veilfed.model.encoders.base import Encoded, Encoder
from veilfed.registry import import_submodules

import_submodules(__name__)

__all__ = ["Encoded", "Encoder"]
