"""Network preflight: every failure is one line naming the cause, and retries are bounded."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from veilfed.crypto import certs
from veilfed.errors import UsageError
from veilfed.launch import net


def test_parse_address() -> None:
    assert net.parse_address("127.0.0.1:9092", "--address") == ("127.0.0.1", 9092)
    assert net.parse_address("[::1]:80", "--address") == ("::1", 80)
    for bad in ("127.0.0.1", ":9092", "host:http", "host:70000"):
        with pytest.raises(UsageError, match="expected HOST:PORT"):
            net.parse_address(bad, "--superlink")


def test_port_in_use_is_named() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(UsageError, match=f"port {port} is in use"):
            net.check_port_free("127.0.0.1", port, "--address")
    net.check_port_free("127.0.0.1", port, "--address")  # free again once closed


def test_backoff_doubles_and_caps() -> None:
    assert net.backoff_delays(6, 0.5, cap=4.0) == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert net.backoff_delays(1) == []


def test_unreachable_gives_up_after_bounded_tries() -> None:
    port = net.free_port()
    retries: list[float] = []
    start = time.monotonic()
    with pytest.raises(UsageError, match=r"unreachable after 3 tries \(Connection refused\)"):
        net.wait_reachable(
            "127.0.0.1", port, tries=3, first_delay=0.05, on_retry=lambda i, d, e: retries.append(d)
        )
    assert retries == [0.05, 0.1]
    assert time.monotonic() - start < 5


def _serve_tls(cert: Path, key: Path) -> Iterator[int]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        server.close()


@pytest.fixture
def tls_port(trust: certs.CertBundle) -> Iterator[int]:
    yield from _serve_tls(trust.server_cert, trust.server_key)


def test_tls_ok_and_wrong_ca(trust: certs.CertBundle, tls_port: int, tmp_path: Path) -> None:
    net.check_tls("127.0.0.1", tls_port, trust.ca_cert)
    net.check_tls("localhost", tls_port, trust.ca_cert)
    other = certs.create_bundle(tmp_path / "other", 1)
    with pytest.raises(UsageError, match="wrong CA"):
        net.check_tls("127.0.0.1", tls_port, other.ca_cert)


def test_tls_expired_server_certificate(tmp_path: Path) -> None:
    old = certs.create_bundle(
        tmp_path / "old", 1, days=1, not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    )
    for port in _serve_tls(old.server_cert, old.server_key):
        with pytest.raises(UsageError, match="certificate has expired"):
            net.check_tls("127.0.0.1", port, old.ca_cert)


def test_tls_host_not_in_certificate(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    ca_key, ca = certs.new_ca()
    key, cert = certs.issue_server_cert(ca_key, ca, ["coord.example"])
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "s.pem").write_bytes(cert.public_bytes(pem))
    (tmp_path / "s.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    for port in _serve_tls(tmp_path / "s.pem", tmp_path / "s.key"):
        with pytest.raises(UsageError, match="not valid for '127.0.0.1'.*--host 127.0.0.1"):
            net.check_tls("127.0.0.1", port, tmp_path / "ca.pem")


def test_plain_tcp_server_is_not_tls(trust: certs.CertBundle) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        conn, _ = server.accept()
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    with pytest.raises(UsageError, match="TLS handshake failed"):
        net.check_tls("127.0.0.1", port, trust.ca_cert)
    server.close()
