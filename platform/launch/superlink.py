"""Flower's SuperLink with only the Fleet API on the public address.

Flower 1.42 serves the Fleet API (nodes), the Control API (register nodes, start runs with any
app bundle) and the Runtime API (ServerApp processes) from one uvicorn app on one ``--host``/
``--port``; there is no flag to split them, and the Control API has no authentication outside
Flower's enterprise OIDC plugin. Whoever reaches that port could register a node key of their own
or start a run with their own code. So ``veilfed coordinator start`` runs this module instead of
``flower-superlink``: the same Flower app, built by Flower's own argument parser and app factory,
served on two sockets:

* the Flower ``--host``/``--port`` (which must be loopback): every API, for ``veilfed coordinator
  start`` itself and the ServerApp processes Flower starts on this machine;
* ``--fleet-address HOST:PORT`` (the coordinator's ``--address``): only ``/v1/fleet/*`` (Fleet
  API, each call signed by a registered node key) and ``/health``; anything else is answered 404
  and logged.

Usage: ``python -m veilfed.launch.superlink --fleet-address HOST:PORT FLOWER-SUPERLINK-ARGS...``
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

log = logging.getLogger("veilfed.superlink")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC_PATHS = ("/v1/fleet/",)  # prefixes served on the public (Fleet) address
PUBLIC_EXACT = ("/health",)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def public_path(path: str) -> bool:
    """Whether a request path may be served on the public address: the Fleet API only."""
    return path in PUBLIC_EXACT or any(path.startswith(p) for p in PUBLIC_PATHS)


class FleetOnly:
    """ASGI wrapper: requests that arrived on the loopback control socket reach every API;
    all others (the public socket, or a socket it cannot tell) reach only the Fleet API."""

    def __init__(self, app: ASGIApp, control: tuple[str, int]) -> None:
        self.app = app
        self.control_port = control[1]

    def _from_control_socket(self, scope: Scope) -> bool:
        server = scope.get("server")
        return bool(server) and server[1] == self.control_port and is_loopback(str(server[0]))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan: Flower's startup/shutdown
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        if self._from_control_socket(scope) or public_path(path):
            await self.app(scope, receive, send)
            return
        client = scope.get("client") or ("?", 0)
        log.warning(
            "refused %s from %s:%s: the public address serves only the Fleet API",
            path, client[0], client[1],
        )  # fmt: skip
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 404,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"Not Found"})


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 when the host is an IPv6 address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _pop_option(argv: list[str], name: str) -> str:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
            del argv[i : i + 2]
            return value
        if arg.startswith(name + "="):
            del argv[i]
            return arg.split("=", 1)[1]
    raise SystemExit(f"veilfed.launch.superlink: {name} HOST:PORT is required")


def main(argv: list[str] | None = None) -> None:
    import importlib

    import uvicorn
    from flwr.supercore.http_logging import get_uvicorn_log_config
    from flwr.supercore.logger import console_handler
    from flwr.superlink.main import create_app

    # The module, not the function of the same name that flwr.superlink.cli re-exports.
    flower = importlib.import_module("flwr.superlink.cli.flower_superlink")

    from veilfed.launch.net import parse_address

    args = list(sys.argv[1:] if argv is None else argv)
    fleet_host, fleet_port = parse_address(_pop_option(args, "--fleet-address"), "--fleet-address")
    sys.argv = ["flower-superlink", *args]
    config = flower._parse_superlink_lifespan_config()  # Flower's own flags and checks
    if not is_loopback(config.host):
        raise SystemExit(f"veilfed.launch.superlink: --host {config.host} must be loopback")
    if config.ssl_certfile is None:
        raise SystemExit("veilfed.launch.superlink: TLS is required (--ssl-certfile ...)")
    app = FleetOnly(create_app(config, flower.SuperLinkLifespan), (config.host, config.port))
    # The control socket first: once the public one answers, both do.
    sockets = [bind(config.host, config.port), bind(fleet_host, fleet_port)]
    # Our lines only: a root handler would also print Flower's debug records (it has its own).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    log.info(
        "Fleet API on %s:%d; Control and Runtime APIs on %s:%d only",
        fleet_host, fleet_port, config.host, config.port,
    )  # fmt: skip
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            interface="asgi3",
            lifespan="on",
            access_log=True,
            log_config=get_uvicorn_log_config(console_handler.level),
            ssl_keyfile=config.ssl_keyfile,
            ssl_certfile=config.ssl_certfile,
            workers=1,
        )
    )
    server.run(sockets=sockets)


if __name__ == "__main__":
    main()
