"""Child processes (flower-superlink, flower-supernode) that always go away when we do.

Each child runs in its own session so a signal reaches its whole group; Flower's SuperExec and
app processes are also collected through ``/proc`` (SuperLink starts SuperExec in a session of its
own). ``stop`` sends SIGTERM, waits a bounded time, then SIGKILLs whatever is left, so neither a
clean shutdown nor a crash leaves a process behind. Output is passed through line by line with the
child's name as prefix, minus terminal colour codes, and the tail is kept for error messages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;]*m")

log = logging.getLogger("veilfed.launch")


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces, so split after the last ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal_all(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class Child:
    """One managed child process with its output pumped to our log."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        on_line: Callable[[str], None] | None = None,
        echo: bool = True,
        quiet: Callable[[str], bool] | None = None,
    ) -> None:
        self.name = name
        self.tail: deque[str] = deque(maxlen=200)
        self._on_line = on_line
        self._echo = echo
        self._quiet = quiet
        self._log = logging.getLogger(f"veilfed.{name}")
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            text=True,
            errors="replace",
            bufsize=1,
        )
        self._pump = threading.Thread(target=self._read, name=f"{name}-output", daemon=True)
        self._pump.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = _ANSI.sub("", raw.rstrip("\n"))
            if not line.strip():
                continue
            self.tail.append(line)
            if self._echo:
                quiet = self._quiet is not None and self._quiet(line)
                self._log.log(logging.DEBUG if quiet else logging.INFO, "%s", line)
            if self._on_line is not None:
                self._on_line(line)

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait_output(self, timeout: float = 2.0) -> None:
        """Let the pump drain after the process exited (so ``tail`` is complete)."""
        self._pump.join(timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the child, its group and descendants; SIGKILL what is left after ``timeout``."""
        family = [self.pid, *descendants(self.pid)]
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
        _signal_all(family, signal.SIGTERM)

        def running() -> bool:
            return self.proc.poll() is None or any(_alive(p) for p in family[1:])

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and running():
            time.sleep(0.1)
        left = [p for p in family if p != self.pid and _alive(p)]
        if self.proc.poll() is None or left:
            log.warning("%s did not stop within %.0fs; killing it", self.name, timeout)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            _signal_all([*left, self.pid], signal.SIGKILL)
        code = self.proc.wait(5)
        self.wait_output()
        return code


class StopSignal:
    """SIGTERM/SIGINT set an event instead of killing us, so children are stopped in order."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: int | None = None

    def _handle(self, signum: int, _frame: object) -> None:
        self.received = signum
        self.event.set()

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignal]:
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""


def strip_colour(line: str) -> str:
    return _ANSI.sub("", line)


def setup_logging(verbose: bool = False) -> None:
    """Human-readable log lines on stderr: time, level, component, message."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # One line per Control API request is noise for an operator; --verbose shows it.
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)
