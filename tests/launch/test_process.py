"""Children always go away: SIGTERM first, SIGKILL after a bounded wait, grandchildren included."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from veilfed.launch.process import Child, StopSignal, descendants

# A child that ignores SIGTERM and starts a grandchild in a session of its own (like SuperExec).
_STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
print("ready", flush=True)
time.sleep(60)
"""


def _wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_stop_kills_stubborn_tree_within_bound() -> None:
    lines: list[str] = []
    child = Child("stubborn", [sys.executable, "-c", _STUBBORN], on_line=lines.append)
    assert _wait_for(lambda: "ready" in lines and descendants(child.pid))
    family = [child.pid, *descendants(child.pid)]
    start = time.monotonic()
    code = child.stop(timeout=1.0)
    assert time.monotonic() - start < 5
    assert code == -signal.SIGKILL
    for pid in family:
        assert _wait_for(lambda pid=pid: not _running(pid), 5), f"pid {pid} left behind"


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        state = stat.rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_output_is_pumped_without_colour_and_tail_kept() -> None:
    script = "print('\\x1b[92mINFO\\x1b[0m: hello'); print('bye')"
    child = Child("echo", [sys.executable, "-c", script], echo=False)
    assert child.proc.wait(10) == 0
    child.wait_output()
    assert list(child.tail) == ["INFO: hello", "bye"]
    assert child.stop(1.0) == 0


def test_stop_signal_sets_event_instead_of_dying() -> None:
    stop = StopSignal()
    with stop.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.event.wait(2)
        assert stop.name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is not stop._handle
