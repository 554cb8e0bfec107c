"""Dataset item ids: a stored clip's id, or ``"<clip id>#<k>"`` for window k of a clip ingested
with windows (:mod:`veilfed.data.windowed`). A stored clip id never contains ``#`` (ingest
replaces it in file stems), so an item id reads without ambiguity. A module of its own, with no
video dependencies, because evaluation reads item ids too (:mod:`veilfed.metrics.videos`)."""

from __future__ import annotations

SEP = "#"


def window_item(clip_id: str, k: int) -> str:
    """The item id of window ``k`` of clip ``clip_id``."""
    return f"{clip_id}{SEP}{k}"


def split_window_id(item_id: str) -> tuple[str, int | None]:
    """``"clip#3"`` -> ``("clip", 3)``; a plain clip id -> ``(id, None)``."""
    head, sep, tail = item_id.rpartition(SEP)
    return (head, int(tail)) if sep and head and tail.isdigit() else (item_id, None)
