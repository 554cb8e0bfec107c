"""``veilfed coordinator start``: a SuperLink with TLS and node auth, then the veilfed run.

Order of events: preflight (certificates current and chained to the CA, node keys readable,
app-signing key private, config present, HE context public, ports free) → the SuperLink child
(``veilfed.launch.superlink``: Flower's SuperLink with only the Fleet API on ``--address`` and the
Control and Runtime APIs on ``127.0.0.1:--control-port``) → wait until it answers TLS → register
every node public key from ``--auth-keys`` over the loopback Control API (only those nodes get
in) → wait for the nodes to come online (bounded) → submit the veilfed Flower App with this run's
config, signed with the app-signing key (nodes run only signed bundles) → stream the ServerApp
log until the run finishes. SIGTERM stops the run and the SuperLink in order; the ServerApp
checkpoints every round, so ``--resume RUN`` continues it. The coordinator never holds data,
client keys or the HE secret.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veilfed.config import load_config
from veilfed.crypto.app_signing import APP_SIGNING_KEY, load_signing_key
from veilfed.crypto.cert_checks import (
    check_private_mode,
    check_server_material,
    load_node_public_keys,
)
from veilfed.crypto.certs import CA_CERT, SERVER_CERT, SERVER_KEY
from veilfed.errors import CheckFailed, UsageError
from veilfed.launch.app_project import write_app_project
from veilfed.launch.control import ControlClient
from veilfed.launch.flower import child_env
from veilfed.launch.net import check_port_free, check_tls, parse_address
from veilfed.launch.process import Child, StopSignal, strip_colour

log = logging.getLogger("veilfed.coordinator")


@dataclass
class CoordinatorOptions:
    """Everything ``veilfed coordinator start`` takes."""

    address: str
    certs: Path
    auth_keys: Path
    config: Path
    state: Path
    resume: str | None = None
    he_context: Path | None = None  # the *public* CKKS context; the secret one stays with nodes
    serve: bool = False  # keep the SuperLink up after the run (a service); else exit with it
    control_port: int = 9093  # Control and Runtime APIs, on 127.0.0.1 only
    app_signing_key: Path | None = None  # default: <certs>/app-signing.key
    wait_nodes_s: float = 300.0
    ready_timeout_s: float = 60.0
    stop_timeout_s: float = 15.0


def _check_config(path: Path, he_context: Path | None) -> None:
    """The config loads; HE runs get the public context here (the secret one never)."""
    if not path.is_file():
        raise UsageError(f"{path}: no such config file; check --config")
    if load_config(path).he.enabled and he_context is None:
        raise UsageError(
            f"{path}: [he] enabled needs --he-context public.ctx (from `veilfed he keygen`; the "
            "nodes get its secret.ctx)"
        )


def _check_resumable(runs_dir: Path, run_id: str) -> None:
    """--resume needs the run's state (settings, checkpoint) under this coordinator's --state."""
    if not (runs_dir / run_id / "settings.json").is_file():
        raise UsageError(
            f"--resume {run_id}: no run state in {runs_dir / run_id}; use the same --state as "
            "the run you continue"
        )


def _local(host: str) -> str:
    """The address to reach a server bound to ``host`` from this machine."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


CONTROL_HOST = "127.0.0.1"


def _signing_key(opts: CoordinatorOptions) -> Ed25519PrivateKey:
    path = opts.app_signing_key or opts.certs / APP_SIGNING_KEY
    flag = "--app-signing-key" if opts.app_signing_key else "--certs"
    if not path.exists():
        raise UsageError(
            f"{path}: app-signing key not found; check {flag} (`veilfed certs signing-key "
            "--out DIR` makes one; nodes run only app bundles it signed)"
        )
    check_private_mode(path, flag)
    return load_signing_key(path, flag)


def _wait_ready(
    link: Child, host: str, port: int, ca: Path, timeout: float, stop: StopSignal
) -> None:
    """Until the SuperLink completes a TLS handshake; fail naming why if it exits or times out."""
    deadline = time.monotonic() + timeout
    delay = 0.2
    while not stop.event.is_set():
        code = link.poll()
        if code is not None:
            link.wait_output()
            last = link.tail[-1] if link.tail else "no output"
            raise UsageError(f"flower-superlink exited with code {code} at start: {last}")
        try:
            check_tls(_local(host), port, ca, timeout=2.0, flag="--address")
            return
        except UsageError as exc:
            if "unreachable" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise UsageError(
                    f"--address {host}:{port}: flower-superlink did not answer within "
                    f"{timeout:.0f}s; see its log above"
                ) from None
        stop.event.wait(delay)
        delay = min(delay * 2, 2.0)


def _wait_nodes(
    ctl: ControlClient, ids: dict[str, int], stop: StopSignal, timeout: float
) -> set[int]:
    """Wait (bounded) until every registered node is online; the online ids at the end."""
    deadline = time.monotonic() + timeout
    want = set(ids.values())
    online: set[int] = set()
    last_report = 0.0
    while not stop.event.is_set():
        online = ctl.online_nodes() & want
        if online == want or time.monotonic() > deadline:
            break
        if time.monotonic() - last_report > 10:
            missing = sorted(n for n, i in ids.items() if i not in online)
            log.info("waiting for %d node(s) to connect: %s", len(missing), ", ".join(missing))
            last_report = time.monotonic()
        stop.event.wait(0.5)
    return online


_ROUTINE = ("[uvicorn.access]", "ControlServicer.ListNodes", "ControlServicer.ListRuns", "[Fleet.")


def routine_line(line: str) -> bool:
    """Per-request SuperLink lines, logged at debug level (``--verbose`` shows them)."""
    return any(marker in line for marker in _ROUTINE)


def run_config_for(opts: CoordinatorOptions, ids: dict[str, int]) -> dict[str, object]:
    """The ``[tool.flwr.app.config]`` of the submitted app: read by the veilfed ServerApp.

    ``node-clients`` maps each registered node id to the name of its auth key (the client id it
    must present), so a node cannot pass off another client's shard as its own.
    """
    return {
        "config": str(opts.config.absolute()),
        "clients": len(ids),
        "node-clients": json.dumps({str(node): name for name, node in ids.items()}),
        "runs-dir": str((opts.state / "runs").absolute()),
        "resume": opts.resume or "",
        "he-context": str(opts.he_context.absolute()) if opts.he_context else "",
    }


def start(opts: CoordinatorOptions) -> int:
    """Run the coordinator until its run finishes (0), fails (1) or SIGTERM arrives (0)."""
    host, port = parse_address(opts.address, "--address")
    if not 0 < opts.control_port < 65536 or opts.control_port == port:
        raise UsageError(
            f"--control-port {opts.control_port}: use a port in 1..65535 other than the "
            f"--address port {port}"
        )
    check_server_material(opts.certs)
    signing_key = _signing_key(opts)
    keys = load_node_public_keys(opts.auth_keys)
    _check_config(opts.config, opts.he_context)
    if opts.he_context is not None:
        from veilfed.crypto.he_keys import load_context

        try:
            load_context(opts.he_context, require_secret=False)
        except UsageError as exc:
            raise UsageError(f"--he-context {exc}") from None
    if opts.resume:
        _check_resumable(opts.state / "runs", opts.resume)
    check_port_free(host, port, "--address")
    check_port_free(CONTROL_HOST, opts.control_port, "--control-port")
    ca = (opts.certs / CA_CERT).absolute()
    opts.state.mkdir(parents=True, exist_ok=True)
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').absolute()}"
    env = child_env(opts.state / "superlink-home", {"MLFLOW_TRACKING_URI": tracking})
    argv = [
        sys.executable, "-m", "veilfed.launch.superlink",
        "--fleet-address", opts.address,
        "--ssl-ca-certfile", str(ca),
        "--ssl-certfile", str((opts.certs / SERVER_CERT).absolute()),
        "--ssl-keyfile", str((opts.certs / SERVER_KEY).absolute()),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--database", str((opts.state / "superlink.db").absolute()),
        "--host", CONTROL_HOST,
        "--port", str(opts.control_port),
    ]  # fmt: skip
    stop = StopSignal()
    with stop.installed():
        link = Child("superlink", argv, env, cwd=opts.state, quiet=routine_line)
        try:
            return _serve(opts, link, (host, port), ca, keys, signing_key, stop, tracking)
        finally:
            code = link.stop(opts.stop_timeout_s)
            log.info("SuperLink stopped (exit %s)", code)


def _serve(
    opts: CoordinatorOptions,
    link: Child,
    fleet: tuple[str, int],
    ca: Path,
    keys: dict[str, bytes],
    signing_key: Ed25519PrivateKey,
    stop: StopSignal,
    tracking: str,
) -> int:
    host, port = fleet
    _wait_ready(link, host, port, ca, opts.ready_timeout_s, stop)
    if stop.event.is_set():
        log.info("stopped on %s while the SuperLink started", stop.name)
        return 0
    log.info(
        "SuperLink listening on https://%s:%d (Fleet API only; TLS on, node authentication on); "
        "Control and Runtime APIs on https://%s:%d (this machine only)",
        host, port, CONTROL_HOST, opts.control_port,
    )  # fmt: skip
    control = f"{CONTROL_HOST}:{opts.control_port}"
    with ControlClient(control, ca, opts.state / "control-home") as ctl:
        ids = ctl.register_nodes(keys)
        log.info("registered %d node key(s): %s", len(ids), ", ".join(sorted(ids)))
        online = _wait_nodes(ctl, ids, stop, opts.wait_nodes_s)
        if stop.event.is_set():
            log.info("stopped on %s before the run started", stop.name)
            return 0
        if not online:
            raise UsageError(
                f"no node connected within {opts.wait_nodes_s:.0f}s; start them with "
                "`veilfed node start --superlink HOST:PORT ...`"
            )
        if len(online) < len(ids):
            log.warning("starting with %d of %d nodes online", len(online), len(ids))
        app_dir = write_app_project(opts.state / "app", run_config_for(opts, ids))
        run_id = ctl.start_run(app_dir, signing_key)
        log.info("started run %d (MLflow tracking at %s)", run_id, tracking)
        code = _follow(ctl, run_id, link, stop)
    return _serve_on(stop, link) if opts.serve and not stop.event.is_set() else code


def _follow(ctl: ControlClient, run_id: int, link: Child, stop: StopSignal) -> int:
    server_log = logging.getLogger("veilfed.serverapp")
    done = threading.Event()

    def stream() -> None:
        try:
            ctl.stream_logs(run_id, lambda line: server_log.info("%s", strip_colour(line)))
        except Exception as exc:  # e.g. the SuperLink went away; the run status says the rest
            log.debug("log stream of run %d ended: %s", run_id, exc)
        finally:
            done.set()

    threading.Thread(target=stream, name="serverapp-log", daemon=True).start()
    while not (done.is_set() or stop.event.is_set() or link.poll() is not None):
        stop.event.wait(0.5)
    if stop.event.is_set():
        log.info(
            "stopping run %d on %s (its last finished round is checkpointed)", run_id, stop.name
        )
        ctl.stop_run(run_id)
        return 0
    if link.poll() is not None:
        raise UsageError(f"flower-superlink exited with code {link.poll()} during run {run_id}")
    status = ctl.run_status(run_id)
    for _ in range(20):  # the log stream can end a moment before the status is final
        if status.finished:
            break
        stop.event.wait(0.5)
        status = ctl.run_status(run_id)
    if not status.ok:
        raise CheckFailed(
            f"run {run_id} {status.status}:{status.sub_status}"
            f"{': ' + status.details if status.details else ''}; see the ServerApp log above"
        )
    log.info("run %d completed", run_id)
    return 0


def _serve_on(stop: StopSignal, link: Child) -> int:
    """--serve: keep the SuperLink (and the nodes' connections) up until SIGTERM."""
    log.info("SuperLink keeps serving until SIGTERM (--serve)")
    while not stop.event.wait(1.0):
        if link.poll() is not None:
            raise UsageError(f"flower-superlink exited with code {link.poll()}")
    log.info("stopped on %s", stop.name)
    return 0
