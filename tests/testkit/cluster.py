"""Real processes on 127.0.0.1 for deployment tests: start veilfed commands, leave none behind.

Every process a test starts carries a unique environment tag that Flower's own children
(SuperExec, ServerApp, ClientApp) inherit, so teardown can find and kill the whole family even if
a parent died first, and can assert that nothing was left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from veilfed.launch.net import free_port

VEILFED = [sys.executable, "-m", "veilfed.cli.main"]

# The real-node experiment of README's walkthrough: 2 tasks, 4x32x32 clips, 2 rounds, 3 clients
# (tests override rounds/clients; `--he-context` on the coordinator turns HE on).
CONFIG = (Path(__file__).parents[2] / "experiments" / "nodes.toml").read_text()

TAG_VAR = "VEILFED_TEST_TAG"


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment carries ``tag``."""
    needle = f"{TAG_VAR}={tag}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


class Proc:
    """One started veilfed command with its combined output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.name = name
        self.log = cwd / f"{name}.log"
        self._fh = self.log.open("w")
        self.popen = subprocess.Popen(
            [*VEILFED, *args], cwd=cwd, env=env, stdout=self._fh, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """Until ``pattern`` appears in the log; fails (with the log) if it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.text())
            if match:
                return match
            if self.popen.poll() is not None:
                break
            time.sleep(0.3)
        raise AssertionError(f"{self.name}: no {pattern!r} in {timeout}s:\n{self.text()[-4000:]}")

    def wait_count(self, text: str, count: int, timeout: float) -> None:
        """Until ``text`` occurs ``count`` times in the log (e.g. the n-th round started)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.text().count(text) >= count:
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(
            f"{self.name}: {text!r} not {count}x in {timeout}s:\n{self.text()[-4000:]}"
        )

    def terminate(self, timeout: float) -> int:
        """SIGTERM and wait (bounded); the exit code."""
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        code = self.popen.wait(timeout)
        self._fh.close()
        return code


class Cluster:
    """Starts processes for one test; teardown stops them and asserts none is left."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tag = uuid.uuid4().hex
        self.procs: list[Proc] = []
        self.env = dict(os.environ)
        self.env[TAG_VAR] = self.tag
        self.env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
        self.env.pop("PYTEST_CURRENT_TEST", None)

    def start(self, name: str, args: list[str]) -> Proc:
        proc = Proc(name, args, self.env, self.root)
        self.procs.append(proc)
        return proc

    def run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*VEILFED, *args], cwd=self.root, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip

    def shutdown(self, timeout: float = 30.0) -> list[int]:
        """SIGTERM everything still running, then SIGKILL stragglers; pids that needed the kill."""
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and tagged_pids(self.tag):
            time.sleep(0.2)
        left = tagged_pids(self.tag)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(5)
        return left


def coordinator_args(
    address: str, certs_dir: Path, auth_keys: Path, config: Path, state: Path, *extra: str
) -> list[str]:
    """A coordinator on ``address`` (Fleet API); its loopback Control port is a free one unless
    ``extra`` names ``--control-port``."""
    control = [] if "--control-port" in extra else ["--control-port", str(free_port())]
    return [
        "coordinator", "start", "--address", address, "--certs", str(certs_dir),
        "--auth-keys", str(auth_keys), "--config", str(config), "--state", str(state),
        *control, *extra,
    ]  # fmt: skip


def node_args(
    superlink: str,
    shard: Path,
    key: Path,
    certs_dir: Path,
    auth_key: Path,
    state: Path,
    *extra: str,
) -> list[str]:
    """A node on ``shard``; its own budget is 8 (``experiments/nodes.toml``'s) unless ``extra``
    names ``--budget``."""
    budget = [] if "--budget" in extra else ["--budget", "8"]
    return [
        "node", "start", "--superlink", superlink, "--shard", str(shard), "--key-file", str(key),
        "--certs", str(certs_dir), "--auth-key", str(auth_key), "--state", str(state),
        "--port", str(free_port()), *budget, *extra,
    ]  # fmt: skip
