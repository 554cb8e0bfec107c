"""Which model a ``MODEL`` argument names: an MLflow URI, a run id or a local directory."""

from __future__ import annotations

import re
from pathlib import Path

from veilfed.model.saved import FINAL_MODEL

RUN_ID = re.compile(r"[0-9a-f]{32}")


def model_source(text: str) -> str:
    """``models:/...`` and ``runs:/...`` URIs and existing paths as given; a bare MLflow run id
    becomes its final model, ``runs:/<id>/model``."""
    if "://" in text or text.startswith(("models:/", "runs:/")) or Path(text).exists():
        return text
    if RUN_ID.fullmatch(text):
        return f"runs:/{text}/{FINAL_MODEL}"
    return text
