"""Flower's simulation engine: the ServerApp and one virtual SuperNode per client, on Ray.

This is the simulation's launcher, the one place that starts both apps together; the apps
themselves (``veilfed.coordinator``, ``veilfed.clients``) share only ``veilfed.federation``.
The run must already be prepared (``veilfed.coordinator.prepare``): the ServerApp gets its id
as ``resume`` in its run config and reopens it from the run directory (the keys are in
``veilfed.coordinator.server_app``), runs its rounds and finishes it; every virtual client reads
the run from the messages it gets. The ServerApp runs in this process (a thread of Flower's
engine), so the log handler it installs is removed again when the engine returns.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from flwr.app import Context, RecordDict
from flwr.simulation.run_simulation import _run_simulation
from flwr.supercore.telemetry import EventType

from veilfed.clients.client_app import app as client_app
from veilfed.coordinator.grid import STOP
from veilfed.coordinator.server_app import app as server_app
from veilfed.coordinator.summary import load_summary
from veilfed.errors import UsageError
from veilfed.federation.settings import RunSettings


def backend_config(
    cpus_per_client: float, ray_address: str | None, gpus_per_client: float = 0.0
) -> dict[str, Any]:
    """Client resources fitted to this machine; or attach to an existing cluster. With
    ``gpus_per_client`` each virtual client holds that share of a GPU (``veilfed.devices``)."""
    init: dict[str, Any] = {"include_dashboard": False, "ignore_reinit_error": True}
    if ray_address:
        init["address"] = ray_address
    else:  # a new Ray of our own, never one that RAY_ADDRESS or a running `ray start` names
        init["address"] = "local"
        init["num_cpus"] = max(1, os.cpu_count() or 1)
        init["object_store_memory"] = 256 * 1024**2
    return {
        "client_resources": {"num_cpus": cpus_per_client, "num_gpus": gpus_per_client},
        "init_args": init,
    }


def run_config(settings: RunSettings) -> dict[str, str]:
    """The ServerApp's run config for a prepared run: reopen it by id."""
    return {"resume": settings.run_id, "runs-dir": str(Path(settings.run_dir).parent)}


def run_engine(settings: RunSettings, ray_address: str | None) -> dict[str, Any]:
    """Run the prepared run on Flower's simulation engine, one virtual SuperNode per client;
    the summary the ServerApp wrote. Flower's public ``run_simulation`` takes no run config,
    so the engine gets the ServerApp's context directly."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    context = Context(
        run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=run_config(settings)
    )
    logger = logging.getLogger("veilfed")
    saved = list(logger.handlers), logger.level, logger.propagate
    STOP.clear()
    try:
        _run_simulation(
            num_supernodes=settings.federated.clients,
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            client_app=client_app,
            server_app=server_app,
            backend_config=backend_config(  # type: ignore[arg-type]
                settings.federated.cpus_per_client,
                ray_address,
                settings.federated.gpus_per_client,
            ),
            server_app_context=context,
        )
    except RuntimeError as exc:  # the engine's; the ServerApp's own errors arrive as raised
        root: BaseException = exc  # Flower wraps the backend's error twice
        while root.__cause__ is not None:
            root = root.__cause__
        cause = " ".join(f"{type(root).__name__}: {root}".split())[:300]
        raise UsageError(
            f"run {settings.run_id}: the simulation engine failed ({cause}); check --ray-address, "
            "[federated] cpus_per_client and Ray's log, then --resume the run"
        ) from exc
    finally:
        STOP.set()  # the engine is gone: a ServerApp still waiting for replies stops now
        logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]
    return load_summary(settings.run_dir)
