"""Container images and start-up: image sizes, and containers vs processes to the first round.

The same federation (deploy/k8s/experiment.toml: a coordinator and two nodes, TLS, node
authentication, DP-SGD, CKKS secure aggregation, 2 rounds) is started twice on this machine:
as deploy/compose.yaml under podman-compose (with MLflow in its own container), and as plain
`veilfed coordinator start` / `veilfed node start` processes (MLflow in a local SQLite file).
For each: seconds from the start command to the SuperLink listening, both nodes connected, the
first round done and the run done; ``first_round_ratio`` is containers / processes. Image sizes
are podman's (uncompressed); the two images share every layer up to their last few.

    sudo -E python experiments/bench/deploy.py [--quick]

Needs root, podman and the built images (`make images`); ``--quick`` skips the timing runs. The
last line is a JSON object of the headline figures; without podman it says why and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from veilfed.launch.net import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = str(Path(sys.executable).parent / "podman-compose")
VEILFED = [sys.executable, "-m", "veilfed.cli.main"]
IMAGES = ("localhost/veilfed-base:bookworm", "veilfed-node:latest", "veilfed-coordinator:latest")
MARKS = {
    "listening": r"SuperLink listening on",
    "connected": r"node client-0001 connected|started run",
    "first_round": r"round 1: sampled",
    "done": r"run [0-9a-f]{32}: 2 rounds",
}
UID = 10001


def _sh(*args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    res = subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if check and res.returncode != 0:
        sys.exit(f"{' '.join(args[:3])}: {res.stderr.strip()[-2000:]}")
    return res.stdout


def _logs(container: str) -> str:
    """A container's log: podman passes the container's stdout and stderr through as its own."""
    res = subprocess.run(["podman", "logs", container], capture_output=True, text=True)
    return res.stdout + res.stderr


def image_sizes() -> dict[str, float]:
    out = {}
    for image in IMAGES:
        size = _sh("podman", "image", "inspect", "--format", "{{.Size}}", image, check=False)
        out[image.split("/")[-1].split(":")[0]] = round(int(size) / 1e9, 3) if size else None
    return out


def _timeline(read_log, start: float, timeout: float = 1200) -> dict[str, float]:
    """Seconds from ``start`` until each of MARKS appears in the log ``read_log()`` returns."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(MARKS) and time.monotonic() < deadline:
        text = read_log()
        for name, pattern in MARKS.items():
            if name not in seen and re.search(pattern, text):
                seen[name] = round(time.monotonic() - start, 1)
        time.sleep(0.5)
    if len(seen) < len(MARKS):
        sys.exit(f"timed out; log tail:\n{read_log()[-3000:]}")
    return seen


def prepare(out: Path, *hosts: str) -> Path:
    veilfed = " ".join(VEILFED)
    _sh(str(ROOT / "deploy/prepare.sh"), str(out), "2", *hosts, env={"VEILFED": veilfed})
    for path in [out, *out.rglob("*")]:
        os.chown(path, UID, UID)
    return out


def containers(work: Path) -> dict[str, float]:
    secrets = prepare(work / "compose", "coordinator")
    env = {"VEILFED_SECRETS": str(secrets), "FLEET_PORT": str(free_port())}
    args = [COMPOSE, "-p", "vfbench", "-f", str(ROOT / "deploy/compose.yaml")]
    start = time.monotonic()
    _sh(*args, "up", "-d", env=env)
    try:
        return _timeline(lambda: _logs("vfbench_coordinator_1"), start)
    finally:
        _sh(*args, "down", "-v", "-t", "30", env=env, check=False)


def processes(work: Path) -> dict[str, float]:
    secrets = prepare(work / "procs")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}
    address = f"127.0.0.1:{free_port()}"
    log = work / "coordinator.log"
    procs = []
    start = time.monotonic()
    with log.open("w") as fh:
        procs.append(subprocess.Popen(
            [*VEILFED, "coordinator", "start", "--address", address, "--certs",
             str(secrets / "certs"), "--auth-keys", str(secrets / "certs/auth-keys"),
             "--config", str(ROOT / "deploy/k8s/experiment.toml"), "--state", str(work / "cstate"),
             "--he-context", str(secrets / "he/public.ctx")],
            cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT,
        ))  # fmt: skip
        for i in range(2):
            cid = f"client-{i:04d}"
            procs.append(subprocess.Popen(
                [*VEILFED, "node", "start", "--superlink", address, "--certs",
                 str(secrets / "certs"), "--auth-key", str(secrets / f"certs/nodes/{cid}.key"),
                 "--shard", str(secrets / f"data/{cid}.vfs"),
                 "--key-file", str(secrets / f"data/{cid}.key"), "--state", str(work / cid),
                 "--he-context", str(secrets / "he/secret.ctx"), "--he-min-contributors", "2",
                 "--share-eval-metrics", "--budget", "8", "--connect-tries", "8",
                 "--port", str(free_port())],
                cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT,
            ))  # fmt: skip
        try:
            return _timeline(log.read_text, start)
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                p.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="image sizes only")
    args = parser.parse_args()
    if shutil.which("podman") is None or os.geteuid() != 0:
        print(json.dumps({"skipped": "needs root and podman (apt-get install podman runc)"}))
        return
    result: dict[str, object] = {"image_gb": image_sizes()}
    print(f"image sizes (GB): {result['image_gb']}")
    if not args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            result["processes_s"] = processes(work)
            print(f"processes (s from start): {result['processes_s']}")
            result["containers_s"] = containers(work)
            print(f"containers (s from `up`): {result['containers_s']}")
        c, p = result["containers_s"], result["processes_s"]
        result["first_round_ratio"] = round(c["first_round"] / p["first_round"], 2)  # type: ignore[index]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
