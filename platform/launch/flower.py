"""An environment of its own for each Flower child, with Flower's executables found first."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def child_env(flwr_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment plus a private FLWR_HOME; Flower's own executables first on PATH.

    Flower starts ``flower-superexec`` and the app processes by name, so the interpreter's bin
    directory must be on PATH; a private FLWR_HOME keeps installed FABs and state per process.
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["FLWR_HOME"] = str(flwr_home)
    env["PYTHONUNBUFFERED"] = "1"
    # A privacy-preserving deployment does not phone home: no telemetry, no update check.
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env.update(extra or {})
    return env
