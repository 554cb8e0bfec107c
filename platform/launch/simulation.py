"""Flower's simulation engine: the ServerApp and one virtual SuperNode per client, on Ray.

This is the simulation's launcher, the one place that starts both apps together; the apps
themselves (``veilfed.coordinator``, ``veilfed.clients``) share only ``veilfed.federation``.
The run must already be prepared (``veilfed.coordinator.run.prepare``): the ServerApp reads
its settings from the run directory and every virtual client from the messages it gets.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from flwr.simulation import run_simulation

from veilfed.clients.client_app import app as client_app
from veilfed.coordinator.server_app import make_server_app
from veilfed.federation.settings import RunSettings


def backend_config(cpus_per_client: float, ray_address: str | None) -> dict[str, Any]:
    """Client resources fitted to this machine; or attach to an existing cluster."""
    init: dict[str, Any] = {"include_dashboard": False, "ignore_reinit_error": True}
    if ray_address:
        init["address"] = ray_address
    else:
        init["num_cpus"] = max(1, os.cpu_count() or 1)
        init["object_store_memory"] = 256 * 1024**2
    return {
        "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
        "init_args": init,
    }


def run_engine(settings: RunSettings, tracker: Any, ray_address: str | None) -> None:
    """Flower's simulation engine with one virtual SuperNode per client."""
    logging.getLogger("veilfed").setLevel(logging.INFO)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    run_simulation(
        server_app=make_server_app(settings.run_dir, tracker),
        client_app=client_app,
        num_supernodes=settings.federated.clients,
        backend_config=backend_config(settings.federated.cpus_per_client, ray_address),  # type: ignore[arg-type]
    )
