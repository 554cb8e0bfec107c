"""The Flower App the coordinator submits: a one-file project naming veilfed's installed apps.

``flwr run`` ships a FAB (a zip of the app project) to the SuperLink, which hands it to every
SuperNode. veilfed's one ServerApp (``veilfed.coordinator.server_app``, whose run-config keys
pick the real-node mode) and its one ClientApp (``veilfed.clients.client_app``) are installed
packages on both sides (the Docker images, the venv), so the project needs only a
``pyproject.toml`` whose components point at them and whose ``[tool.flwr.app.config]`` carries
this run's settings, plus an empty ``app-signature`` slot: the coordinator fills it at
submission with its signature over the built FAB (``veilfed.crypto.app_signing``), the only
config a run may override. Runtime dependency installation stays off: nodes never download
anything.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

from veilfed.crypto.app_signing import SIGNATURE_KEY
from veilfed.io import write_text_atomic

SERVER_APP = "veilfed.coordinator.server_app:app"
CLIENT_APP = "veilfed.clients.client_app:app"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_app_project(directory: str | Path, run_config: dict[str, Any]) -> Path:
    """Write ``directory/pyproject.toml`` for a run with ``run_config``; the directory."""
    directory = Path(directory)
    version = importlib.metadata.version("veilfed")
    lines = [
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        'name = "veilfed-app"',
        f'version = "{version}"',
        'description = "veilfed federated multimodal video training"',
        'license = "Apache-2.0"',
        "dependencies = []",
        "",
        "[tool.flwr.app]",
        'publisher = "veilfed"',
        "",
        "[tool.flwr.app.components]",
        f'serverapp = "{SERVER_APP}"',
        f'clientapp = "{CLIENT_APP}"',
        "",
        "[tool.flwr.app.config]",
        *(f"{key} = {_toml_value(value)}" for key, value in run_config.items()),
        f'{SIGNATURE_KEY} = ""',
        "",
    ]
    write_text_atomic(directory / "pyproject.toml", "\n".join(lines))
    return directory
