"""veilfed's one Flower ServerApp (``app``): simulation, ``flwr run .`` and real nodes.

Every way of running veilfed runs this app; what differs comes from ``context.run_config``:

- ``runs-dir``: where run state lives (``<runs-dir>/<run id>/``); default ``runs``.
- ``resume``: id of a run already prepared under ``runs-dir``: reopen it and run on from its
  last checkpoint (a killed run, or one ``veilfed simulate`` just prepared); "" = a new run.
- ``node-clients``: JSON object node id -> the client id its auth key is registered as;
  non-empty = a run on real nodes (``veilfed coordinator start`` writes it), each node admitted
  only with its own client's shard.
- ``config``: the experiment TOML of a new run.
- ``clients``: number of clients (real nodes: of registered nodes).
- ``he-context``: real nodes: the *public* CKKS context from ``veilfed he keygen``; "" = no HE.
- ``rounds``, ``fraction``, ``epsilon``, ``delta``, ``store``, ``key-file``, ``he``, ``he-dir``:
  ``flwr run .`` overrides of the config, as ``veilfed simulate``'s flags (0, "" or false:
  keep the config's value).

Dispatch: ``resume`` set -> reopen (``prepare.reopen``); else ``node-clients`` non-empty -> a
new run on real nodes (``prepare.prepare_deployment``: no data, client keys or HE secret here);
else a new simulated run from the ``flwr run .`` keys (``prepare.prepare_from_run_config``).
Then the rounds (``rounds.Coordinator``) and the end of the run (``summary.finish``: summary,
MLflow run FINISHED) happen here, once, in every mode; any failure after the MLflow run exists
marks it FAILED. The console report is the CLI's (``veilfed.cli.report``), from the summary
this app writes into the run directory.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from veilfed.coordinator.grid import stoppable
from veilfed.coordinator.prepare import (
    prepare_deployment,
    prepare_from_run_config,
    reopen,
)
from veilfed.coordinator.rounds import Coordinator
from veilfed.coordinator.summary import SUMMARY_FILE, finish
from veilfed.errors import UsageError
from veilfed.federation.log import log_to_stream
from veilfed.federation.rundir import RUNS_DIR
from veilfed.federation.settings import RunSettings
from veilfed.tracking import Tracker

log = logging.getLogger("veilfed.coordinator")


def node_clients_of(run_config: dict[str, Any]) -> dict[int, str]:
    """The ``node-clients`` key: node id -> client id ({} in a simulation)."""
    raw = str(run_config.get("node-clients") or "{}")
    try:
        names = json.loads(raw)
    except ValueError:
        names = None
    if not isinstance(names, dict):
        raise UsageError(f"run config node-clients {raw!r}: expected a JSON object node -> client")
    return {int(node): str(cid) for node, cid in names.items()}


def open_run(run_config: dict[str, Any]) -> tuple[RunSettings, Tracker, dict[int, str]]:
    """The run this app serves (see the module docstring) and the real nodes' client ids."""
    runs_dir = Path(str(run_config.get("runs-dir") or RUNS_DIR))
    node_clients = node_clients_of(run_config)
    resume = str(run_config.get("resume") or "")
    if resume:
        settings, tracker = reopen(runs_dir, resume)
    elif node_clients:
        he = str(run_config.get("he-context") or "")
        settings, tracker = prepare_deployment(
            Path(str(run_config["config"])),
            int(run_config["clients"]),
            runs_dir,
            Path(he) if he else None,
        )
    else:
        settings, tracker = prepare_from_run_config(run_config)
    return settings, tracker, node_clients


def serve(grid: Grid, run_config: dict[str, Any]) -> dict[str, Any]:
    """Open the run, run its rounds on ``grid`` and finish it; the summary."""
    settings, tracker, node_clients = open_run(run_config)
    start = time.perf_counter()
    with tracker.failing_on_error():
        Coordinator(stoppable(grid), settings, tracker, node_clients).run()
        summary = finish(settings, tracker, time.perf_counter() - start)
    log_summary(summary, Path(settings.run_dir) / SUMMARY_FILE)
    return summary


def log_summary(summary: dict[str, Any], path: Path) -> None:
    """The summary's headline in the ServerApp's log: rounds, per-task metrics, ε."""
    log.info(
        "run %s: %d rounds in %.1fs (strategy %s)",
        summary["run_id"],
        summary["rounds"],
        summary["wall_s"],
        summary["strategy"],
    )
    for task, values in sorted(summary["metrics"].items()):
        log.info("eval %s: %s", task, ", ".join(f"{k}={v:.4f}" for k, v in sorted(values.items())))
    eps = [c["epsilon"] for c in summary["clients"].values()]
    if eps:
        log.info(
            "epsilon max %.3f, mean %.3f over %d clients", max(eps), sum(eps) / len(eps), len(eps)
        )
    log.info("summary: %s", path)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    log_to_stream()
    serve(grid, dict(context.run_config))
