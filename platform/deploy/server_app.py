"""The ServerApp ``veilfed coordinator start`` submits: veilfed's run, resumable.

Under ``flwr run`` the ServerApp gets only the FAB's run config. A new run is prepared from it
exactly as veilfed's own app does (``veilfed.coordinator.run.run_from_flwr_config``); with
``resume = RUN`` the run's saved settings and last checkpoint under ``runs-dir/RUN`` are reopened
instead, as ``veilfed simulate --resume`` does, so the clients' accountants and ε carry over.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


def log_to_stream() -> None:
    """veilfed's own log lines (one per round: sampled, accepted, declined ...) into the run's log.

    Flower streams the ServerApp process's output to ``veilfed coordinator start``; Python logging
    has no handler there, so without this only warnings would show.
    """
    logger = logging.getLogger("veilfed")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # a root handler (if a library set one) would print it twice


@app.main()
def main(grid: Grid, context: Context) -> None:
    from veilfed.coordinator.run import finish, print_report, reopen, run_from_flwr_config
    from veilfed.coordinator.server_app import Coordinator

    log_to_stream()
    cfg = dict(context.run_config)
    resume = str(cfg.get("resume") or "")
    if not resume:
        run_from_flwr_config(grid, cfg)
        return
    settings, tracker = reopen(Path(str(cfg["runs-dir"])), resume)
    start = time.perf_counter()
    with tracker.failing_on_error():
        Coordinator(grid, settings, tracker).run()
        print_report(finish(settings, tracker, time.perf_counter() - start))
