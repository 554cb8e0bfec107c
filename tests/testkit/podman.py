"""podman for the container tests: build the images once, run Compose and kube play, read logs.

Every command is the one deploy/README.md gives (deploy/build.sh, deploy/prepare.sh,
podman-compose on deploy/compose.yaml, deploy/k8s/podman_play.py), run from the repository root
with the caller's ``CONTAINERS_CONF`` (``make test-deploy`` points it at
deploy/podman/containers.conf).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = str(Path(sys.executable).parent / "podman-compose")
VEILFED = f"{sys.executable} -m veilfed.cli.main"
IMAGES = ("veilfed-node:latest", "veilfed-coordinator:latest")
UID = 10001  # the images' user (deploy/docker/*.Dockerfile)


def missing() -> str | None:
    """Why the container tests cannot run here, or None."""
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman runc; deploy/README.md)"
    if os.geteuid() != 0:
        return "the container tests run podman as root (bind-mounted keys owned by uid 10001)"
    if not Path(COMPOSE).exists():
        return "podman-compose is not installed: pip install -e '.[deploy]' (make test-deploy)"
    return None


def run(*args: str, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None):
    """One command from the repository root; fails with its output when ``check``."""
    result = subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: exit {result.returncode}\n{result.stderr[-4000:]}")
    return result


def podman(*args: str, timeout: float = 120, check: bool = True):
    return run("podman", *args, timeout=timeout, check=check)


def logs(container: str) -> str:
    result = podman("logs", container, check=False)
    return result.stdout + result.stderr


def state(container: str) -> tuple[str, int, int]:
    """(status, exit code, restart count) of a container."""
    fmt = "{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}"
    status, code, restarts = podman("inspect", "--format", fmt, container).stdout.split()
    return status, int(code), int(restarts)


def wait_log(container: str, pattern: str, timeout: float) -> re.Match[str]:
    """Until ``pattern`` is in the container's log; fails with the log if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = logs(container)
        match = re.search(pattern, text)
        if match:
            return match
        if state(container)[0] in ("exited", "stopped"):
            break
        time.sleep(2)
    raise AssertionError(
        f"{container}: no {pattern!r} in {timeout:.0f}s:\n{logs(container)[-6000:]}"
    )


def containers(label: str) -> dict[str, str]:
    """Service (Compose) name -> container name, for containers carrying ``label``."""
    fmt = '{{.Names}} {{index .Labels "com.docker.compose.service"}}'
    out = podman("ps", "-a", "--filter", f"label={label}", "--format", fmt).stdout
    return {svc: name for name, svc in (line.split() for line in out.splitlines())}


def prepare(out: Path, *hosts: str) -> Path:
    """deploy/prepare.sh: trust material, HE keys and two nodes' shards, owned by the image user."""
    run(str(DEPLOY / "prepare.sh"), str(out), "2", *hosts, env={"VEILFED": VEILFED}, timeout=300)
    for path in [out, *out.rglob("*")]:
        os.chown(path, UID, UID)
    return out
