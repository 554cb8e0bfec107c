"""The ServerApp ``veilfed coordinator start`` submits: veilfed's run on real nodes, resumable.

Under ``flwr run`` the ServerApp gets only the FAB's run config (``config``, ``clients``,
``node-clients``, ``runs-dir``, ``resume``, ``he-context``). A new run is prepared for real nodes
(``veilfed.coordinator.run.prepare_deployment``: no data, client keys or HE secret here); with
``resume = RUN`` the run's saved settings and last checkpoint under ``runs-dir/RUN`` are reopened,
as ``veilfed simulate --resume`` does, so the clients' accountants and ε carry over.
"""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from veilfed.federation.log import log_to_stream

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from veilfed.coordinator.run import prepare_deployment, reopen, run_on_grid

    log_to_stream()
    cfg = dict(context.run_config)
    runs_dir = Path(str(cfg["runs-dir"]))
    resume = str(cfg.get("resume") or "")
    if resume:
        settings, tracker = reopen(runs_dir, resume)
    else:
        he = str(cfg.get("he-context") or "")
        settings, tracker = prepare_deployment(
            Path(str(cfg["config"])), int(cfg["clients"]), runs_dir, Path(he) if he else None
        )
    names = json.loads(str(cfg.get("node-clients") or "{}"))
    run_on_grid(grid, settings, tracker, {int(node): str(cid) for node, cid in names.items()})
