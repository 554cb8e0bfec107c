"""Network preflight: addresses, free ports, reachability with bounded back-off, TLS trust.

Each check turns a failure Flower would report late (or retry forever) into one line that names
the cause, before any process starts.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from veilfed.errors import UsageError


def parse_address(address: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port)."""
    host, sep, port_s = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise UsageError(f"{flag} {address!r}: expected HOST:PORT, e.g. 127.0.0.1:9092")
    return host, int(port_s)


def check_port_free(host: str, port: int, flag: str) -> None:
    """Fail if ``host:port`` cannot be bound (in use, or not an address of this machine)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            reason = "in use" if exc.errno == 98 else exc.strerror
            raise UsageError(
                f"{flag} {host}:{port}: port {port} is {reason}; choose another port or stop "
                "the process using it"
            ) from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free right now (for tests and local runs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def backoff_delays(tries: int, first: float = 0.5, cap: float = 8.0) -> list[float]:
    """Delays between ``tries`` attempts: doubling from ``first``, capped at ``cap``."""
    return [min(cap, first * 2**i) for i in range(max(tries - 1, 0))]


def retry(
    attempt: Callable[[], None],
    tries: int,
    first_delay: float,
    on_retry: Callable[[int, float, Exception], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Call ``attempt`` until it stops raising OSError, at most ``tries`` times, then re-raise."""
    delays = backoff_delays(tries, first_delay)
    for i in range(tries):
        try:
            attempt()
            return
        except OSError as exc:
            if i == tries - 1:
                raise
            if on_retry is not None:
                on_retry(i + 1, delays[i], exc)
            sleep(delays[i])


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def wait_reachable(
    host: str,
    port: int,
    tries: int,
    first_delay: float = 0.5,
    timeout: float = 3.0,
    on_retry: Callable[[int, float, Exception], None] | None = None,
) -> None:
    """Wait until a TCP connection to ``host:port`` succeeds; one-line error when it never does."""

    def attempt() -> None:
        _connect(host, port, timeout).close()

    try:
        retry(attempt, tries, first_delay, on_retry)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise UsageError(
            f"--superlink {host}:{port}: SuperLink unreachable after {tries} tries ({reason}); "
            "check the address and that `veilfed coordinator start` is running"
        ) from None


def check_tls(
    host: str, port: int, ca_file: Path, timeout: float = 5.0, flag: str = "--superlink"
) -> None:
    """TLS handshake against ``host:port`` trusting only ``ca_file``; names the failure."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    try:
        with (
            contextlib.closing(_connect(host, port, timeout)) as raw,
            ctx.wrap_socket(raw, server_hostname=host),
        ):
            return
    except ssl.SSLCertVerificationError as exc:
        msg = exc.verify_message or str(exc)
        if "expired" in msg:
            cause = (
                "the SuperLink's certificate has expired; the coordinator needs new certificates"
            )
        elif "hostname" in msg.lower() or "IP address mismatch" in msg:
            cause = (
                f"the SuperLink's certificate is not valid for {host!r}; reissue it with "
                f"`veilfed certs new --host {host}`"
            )
        else:
            cause = (
                f"the SuperLink's certificate is not signed by {ca_file} (wrong CA; {msg}); use "
                "the coordinator's ca.pem"
            )
        raise UsageError(f"{flag} {host}:{port}: TLS verification failed: {cause}") from None
    except ssl.SSLError as exc:
        raise UsageError(
            f"{flag} {host}:{port}: TLS handshake failed ({exc.reason or exc}); is this a "
            "veilfed SuperLink with TLS?"
        ) from None
    except OSError as exc:
        raise UsageError(
            f"{flag} {host}:{port}: SuperLink unreachable ({exc.strerror or exc})"
        ) from None
