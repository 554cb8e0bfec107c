"""A Ray cluster of real processes on this machine: a head and worker nodes from `ray start`.

Several raylets share one host when each node has its own ports and its own temp dir, as every
node here does. ``ray stop`` would stop every Ray process on the machine, other tests' included;
instead every process of this cluster carries the test's environment tag (Ray daemons and workers
inherit the environment of the ``ray start`` that launched their node) and the name of its node in
:data:`NODE_VAR`, so teardown signals exactly this cluster's processes and a test can tell on which
node a Ray worker ran.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from testkit.cluster import TAG_VAR, tagged_pids
from veilfed.launch.net import free_port

RAY = str(Path(sys.executable).with_name("ray"))
NODE_VAR = "VEILFED_RAY_NODE"
OBJECT_STORE_BYTES = 80 * 1024**2  # Ray's floor is 75 MiB
# Node lines of `ray status`, e.g. " 1 node_8e264de0...".
_NODE_LINE = re.compile(r"^\s*1 node_[0-9a-f]+\s*$", re.M)


def _proc_text(pid: int, name: str) -> bytes:
    try:
        return (Path("/proc") / str(pid) / name).read_bytes()
    except OSError:
        return b""


def _node_of(pid: int) -> str | None:
    prefix = f"{NODE_VAR}=".encode()
    for item in _proc_text(pid, "environ").split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode()
    return None


def _title(pid: int) -> str:
    """The process title: Ray renames a worker ``ray::<Actor>.<method>`` while it runs one."""
    return _proc_text(pid, "cmdline").replace(b"\0", b" ").decode(errors="replace").strip()


class RayCluster:
    """Real Ray nodes on 127.0.0.1; ``env`` (carrying :data:`testkit.cluster.TAG_VAR`) is every
    node's environment, Ray's token settings included."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.tag = env[TAG_VAR]
        # Ray's socket paths (<temp>/session_<date>_<pid>/sockets/plasma_store) must fit in 107
        # bytes, too long under pytest's tmp_path: a short directory of its own.
        self.root = Path(tempfile.mkdtemp(prefix="vfray-", dir="/tmp"))
        self.port = free_port()
        self.nodes: list[str] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_node(self, name: str, *, head: bool = False) -> None:
        """`ray start` one node of one CPU; the first must be the head."""
        role = (
            ["--head", "--port", str(self.port), "--include-dashboard=false",
             "--ray-client-server-port", str(free_port())]
            if head else ["--address", self.address]
        )  # fmt: skip
        args = [
            RAY, "start", *role, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
            "--object-store-memory", str(OBJECT_STORE_BYTES), "--temp-dir", str(self.root / name),
            "--dashboard-agent-listen-port", str(free_port()),
            "--min-worker-port", "0", "--max-worker-port", "0", "--disable-usage-stats",
        ]  # fmt: skip
        res = self.ray(args[1:], env=self.env | {NODE_VAR: name}, timeout=120)
        assert res.returncode == 0, f"ray start ({name}):\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
        self.nodes.append(name)

    def ray(
        self, args: list[str], env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """One `ray` CLI command (this cluster's environment unless ``env``)."""
        return subprocess.run(
            [RAY, *args], env=self.env if env is None else env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip

    def wait_nodes(self, timeout: float) -> None:
        """Until `ray status` lists every started node as active."""
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            res = self.ray(["status", "--address", self.address])
            out = res.stdout + res.stderr
            if res.returncode == 0 and len(_NODE_LINE.findall(out)) == len(self.nodes):
                return
            time.sleep(1)
        raise AssertionError(f"{len(self.nodes)} Ray nodes not up in {timeout}s:\n{out[-3000:]}")

    def ray_workers(self) -> list[tuple[str, str]]:
        """(node, process title) of every live Ray worker process of this cluster."""
        found = []
        for pid in tagged_pids(self.tag):
            node, title = _node_of(pid), _title(pid)
            if node is not None and title.startswith("ray::"):
                found.append((node, title))
        return found

    @contextlib.contextmanager
    def watch_workers(self, interval: float = 0.5) -> Iterator[dict[str, set[str]]]:
        """Samples :meth:`ray_workers` while the block runs: node -> every title seen there."""
        seen: dict[str, set[str]] = {name: set() for name in self.nodes}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                for node, title in self.ray_workers():
                    seen.setdefault(node, set()).add(title)
                stop.wait(interval)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield seen
        finally:
            stop.set()
            thread.join()

    def stop(self, grace: float = 20.0) -> list[int]:
        """SIGTERM every process of the cluster, the GCS last (raylets that lose it first wait to
        reconnect instead of exiting), SIGKILL what outlives ``grace``; the pids still alive after
        that (none, unless a process cannot be killed). Removes the temp dirs."""
        pids = tagged_pids(self.tag)
        gcs = [pid for pid in pids if _title(pid).split(" ", 1)[0].endswith("/gcs_server")]
        deadline = time.monotonic() + grace
        for group in ([p for p in pids if p not in gcs], gcs):
            for pid in group:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            while time.monotonic() < deadline and set(group) & set(tagged_pids(self.tag)):
                time.sleep(0.2)
        for pid in tagged_pids(self.tag):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and tagged_pids(self.tag):
            time.sleep(0.2)
        shutil.rmtree(self.root, ignore_errors=True)
        return tagged_pids(self.tag)
