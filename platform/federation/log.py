"""veilfed's log lines in a Flower app process's output, for both apps.

Flower streams a ServerApp's output to ``veilfed coordinator start`` (or ``flwr run``) and a
ClientApp's to its SuperNode's log; Python logging has no handler there, so without one only
warnings would show. Both apps call :func:`log_to_stream` on every entry; it adds the handler once.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(levelname)s %(name)s: %(message)s"


def log_to_stream() -> None:
    """veilfed's INFO lines (one per round: sampled, accepted, declined ...) to stderr, once."""
    logger = logging.getLogger("veilfed")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # a root handler (if a library set one) would print it twice
