"""The round loop's waits for replies, which a launcher whose engine died can end at once.

Under Flower's simulation engine the ServerApp runs in a thread of the launcher's process and
waits up to ``round_timeout_s`` for replies. If the engine dies (Ray could not start or attach,
a worker crashed) nothing ever replies: the wait would run to its timeout, and the process could
not exit before it. A launcher sets :data:`STOP` when its engine ends; every wait then ends within
one pull interval with :class:`~veilfed.errors.CheckFailed`, so the run is marked FAILED and the
process exits. Real deployments never set it.

:class:`StoppableGrid` does what Flower's ``Grid.send_and_receive`` does (push every message, then
pull replies until all arrived or ``timeout`` passed), checking :data:`STOP` between pulls, and
``get_node_ids`` (polled while waiting for nodes) checks it too; every other grid method is the
wrapped grid's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from veilfed.errors import CheckFailed

STOP = threading.Event()
PULL_INTERVAL_S = 0.1


class StoppableGrid:
    """``grid`` whose ``send_and_receive`` ends when :data:`STOP` is set."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def get_node_ids(self) -> Any:
        """The connected nodes; ends a wait for nodes (discovery polls this) once stopped."""
        self._check()
        return self._grid.get_node_ids()

    def _check(self) -> None:
        if STOP.is_set():
            raise CheckFailed(
                "the simulation engine stopped before every client replied; the run is "
                "marked FAILED (see the engine's error above)"
            )

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        waiting = set(self._grid.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting and (end is None or time.monotonic() < end):
            self._check()
            pulled = list(self._grid.pull_messages(waiting))
            replies.extend(pulled)
            waiting.difference_update(m.metadata.reply_to_message_id for m in pulled)
            if waiting:
                STOP.wait(PULL_INTERVAL_S)
        return replies


def stoppable(grid: Any) -> Any:
    """Flower's grids wrapped in :class:`StoppableGrid`; any other grid (a test's) as it is."""
    return StoppableGrid(grid) if isinstance(grid, Grid) else grid
