"""``veilfed node start``: a SuperNode running the veilfed ClientApp next to its encrypted shard.

Preflight, in the order a user would fix things: a node that may train with DP has its own
``--budget``; the SuperLink address parses; the CA
certificate is current; the auth key is a private OpenSSH EC key; the shard key opens the bundle
(every chunk authenticates, and the bundle names the client); the HE secret context loads; the
node's local Runtime API port is free; the trusted entities (the app-signing keys whose bundles
this node runs) load; the SuperLink is reachable (bounded retries with back-off) and its
certificate verifies against our CA. Only then does the SuperNode start
(``veilfed.launch.supernode``: Flower's SuperNode with ``--trusted-entities``, so a run whose app
bundle no trusted key signed is refused before any of its code runs, one log line per run). A
node whose key the coordinator did not register is refused by the SuperLink at activation; that
is reported as one line, exit 2.

The checked bundle is imported into the node store ``<state>/client/store``: the same Fernet tokens
under the client's key, so clips are decrypted only in the ClientApp's memory, clip by clip. The
ClientApp finds its node-local inputs in Flower's node config (``veilfed.clients.inputs``):
``client-id`` (from the bundle), ``store``, ``key-file``, ``state-dir`` (accountant history and
report signing key survive restarts there), ``he-context`` and the node's privacy policy
(``veilfed.clients.policy``: ``--budget``, its cap on ε over every run it joins, required
unless it trains only without DP, ``--max-delta``,
``--accountants``, ``--allow-no-dp``), whether metrics on its held-out clips may leave it
(``share-eval-metrics``, ``--share-eval-metrics``; default no) and the fewest contributors an HE
aggregate must sum before it decrypts it (``he-min-contributors``, default 3); nothing of the
coordinator's.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from veilfed.clients.inputs import DEFAULT_HE_FLOOR, he_floor
from veilfed.clients.policy import NodePolicy
from veilfed.crypto.app_signing import TRUSTED_ENTITIES, load_trusted_entities
from veilfed.crypto.cert_checks import check_ca, load_node_private_key
from veilfed.errors import UsageError, VeilfedError
from veilfed.federation.keys import (
    NODE_CLIENT_ID,
    NODE_HE_CONTEXT,
    NODE_HE_FLOOR,
    NODE_KEY_FILE,
    NODE_SHARE_EVAL,
    NODE_STATE_DIR,
    NODE_STORE,
)
from veilfed.io import write_text_atomic
from veilfed.launch.flower import child_env
from veilfed.launch.net import check_port_free, check_tls, parse_address, wait_reachable
from veilfed.launch.process import Child, StopSignal

log = logging.getLogger("veilfed.node")

_REFUSED = "Failed to activate SuperNode"
_CONNECTED = "SuperNode ID:"
NODE_ID_FILE = "node-id"  # the SuperLink's id for this node, once it connected


def _routine(line: str) -> bool:
    """Per-request uvicorn lines of the local Runtime API: debug level."""
    return "HTTP/1.1" in line


@dataclass
class NodeOptions:
    """Everything ``veilfed node start`` takes."""

    superlink: str
    shard: Path
    key_file: Path
    certs: Path
    auth_key: Path
    state: Path
    he_context: Path | None = None
    trusted_entities: Path | None = None  # default: <certs>/trusted-entities.yaml
    policy: NodePolicy = NodePolicy()  # --budget, --max-delta, --accountants, --allow-no-dp
    share_eval_metrics: bool = False  # metrics on the held-out clips may leave the node
    he_min_contributors: int = DEFAULT_HE_FLOOR  # fewest clients an HE aggregate must sum
    port: int = 9094
    connect_tries: int = 5
    first_delay_s: float = 0.5
    max_wait_s: float = 300.0
    stale_wait_s: float = 90.0  # a restarted node's activation may fail until then (see start)
    stop_timeout_s: float = 15.0


def node_store(state: Path) -> Path:
    return state / "client" / "store"


def trusted_entities_file(opts: NodeOptions) -> Path:
    """The app-signing keys this node trusts: --trusted-entities, else the one in --certs."""
    path = opts.trusted_entities or opts.certs / TRUSTED_ENTITIES
    flag = "--trusted-entities" if opts.trusted_entities else "--certs"
    load_trusted_entities(path, flag)
    return path


def import_shard(shard: Path, key_file: Path, state: Path) -> str:
    """Check the key opens every record of the bundle, then make it the node store; the client id.

    The new store is built next to the old one and swapped in by renames, so a failed import
    leaves the previous store (and the bundle, the owner's copy) as they were.
    """
    import shutil

    from veilfed.crypto.keys import read_key_file
    from veilfed.data.bundle import import_bundle

    key = read_key_file(key_file)
    target = node_store(state)
    fresh, old = target.with_name("store.importing"), target.with_name("store.previous")
    for leftover in (fresh, old):
        shutil.rmtree(leftover, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        info = import_bundle(shard, fresh, key)
    except VeilfedError as exc:
        shutil.rmtree(fresh, ignore_errors=True)
        raise type(exc)(f"--shard/--key-file: {exc}") from None
    if target.exists():
        target.rename(old)
    fresh.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    log.info(
        "shard %s opens with %s: client %s, %d clips (node store %s)",
        shard, key_file, info["client"], info["clips"], target,
    )  # fmt: skip
    return str(info["client"])


def log_signing_key(state: Path, client: str) -> None:
    """The fingerprint the coordinator will pin and auditors will see for this client."""
    from veilfed.clients.node_state import NodeState
    from veilfed.privacy.signing import key_id, load_public_key

    pem = NodeState(state / "client", client).public_key_pem()
    log.info(
        "privacy reports of client %s are signed with key %s (%s); `veilfed audit RUN_ID` "
        "must list the same key for %s",
        client, key_id(load_public_key(pem)), state / "client" / "signing.key.pub", client,
    )  # fmt: skip


def _literal(value: str, flag: str) -> str:
    """A TOML literal string for Flower's ``--node-config`` (no escapes, so no quotes inside)."""
    if "'" in value or '"' in value:
        raise UsageError(f"{flag} {value!r}: paths with quotes are not supported; rename it")
    return f"'{value}'"


def node_config(client: str, opts: NodeOptions) -> str:
    items = {
        NODE_CLIENT_ID: client,
        NODE_STORE: str(node_store(opts.state).absolute()),
        NODE_KEY_FILE: str(opts.key_file.absolute()),
        NODE_STATE_DIR: str((opts.state / "client").absolute()),
    }
    if opts.he_context is not None:
        items[NODE_HE_CONTEXT] = str(opts.he_context.absolute())
    pairs = [f"{k}={_literal(v, '--' + k)}" for k, v in items.items()]
    if opts.share_eval_metrics:
        pairs.append(f"{NODE_SHARE_EVAL}=true")
    pairs.append(f"{NODE_HE_FLOOR}={he_floor(opts.he_min_contributors)}")
    for key, value in opts.policy.node_config().items():
        text = _literal(value, "--" + key) if isinstance(value, str) else repr(value).lower()
        pairs.append(f"{key}={text}")
    return " ".join(pairs)


def preflight(opts: NodeOptions) -> tuple[str, int, Path, str]:
    """Every check before the SuperNode starts; (host, port, CA path, client id)."""
    opts.policy.check_start()
    host, port = parse_address(opts.superlink, "--superlink")
    ca = check_ca(opts.certs)
    load_node_private_key(opts.auth_key)
    trusted_entities_file(opts)
    client = import_shard(opts.shard, opts.key_file, opts.state)
    log_signing_key(opts.state, client)
    if opts.he_context is not None:
        from veilfed.crypto.he_keys import load_context

        load_context(opts.he_context, require_secret=True)
    check_port_free("127.0.0.1", opts.port, "--port")

    def retrying(attempt: int, delay: float, exc: Exception) -> None:
        log.warning(
            "SuperLink %s:%d not reachable (%s); retry %d/%d in %.1fs",
            host, port, getattr(exc, "strerror", None) or exc,
            attempt, opts.connect_tries - 1, delay,
        )  # fmt: skip

    wait_reachable(host, port, opts.connect_tries, opts.first_delay_s, on_retry=retrying)
    check_tls(host, port, ca)
    return host, port, ca, client


def sign_off(host: str, port: int, ca: Path, auth_key: Path, node_id: int) -> bool:
    """Tell the SuperLink this node is gone (signed DeactivateNode); Flower's exit may skip it.

    Flower's SuperNode deactivates itself on SIGTERM only sometimes (it depends on where its main
    loop is when the signal arrives); when it does not, the SuperLink lists the node as online
    until its heartbeat times out (about a minute) and refuses a restarted node's activation until
    then. "Not online" (412) therefore counts as signed off.
    """
    import httpx
    from flwr.proto.fleet_pb2 import DeactivateNodeRequest
    from flwr.supernode.fleet_http_client import FleetHttpClient
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    key = load_node_private_key(auth_key)
    try:
        with FleetHttpClient.from_server_address(
            f"{host}:{port}",
            False,
            ca.read_bytes(),
            interceptors=[NodeAuthHttpInterceptor(key, key.public_key())],
        ) as client:
            client.DeactivateNode(DeactivateNodeRequest(node_id=node_id))
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == httpx.codes.PRECONDITION_FAILED:
            return True  # not online any more: the SuperNode signed off itself this time
        log.warning("could not sign off from SuperLink %s:%d (%s)", host, port, exc)
        return False
    except Exception as exc:  # best effort: the heartbeat timeout covers what this misses
        log.warning("could not sign off from SuperLink %s:%d (%s)", host, port, exc)
        return False
    return True


def _known_node(state: Path) -> int | None:
    path = state / NODE_ID_FILE
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class _Watch:
    """Follows the SuperNode's output: refused activation, node id once connected."""

    def __init__(self, client: str, where: str) -> None:
        self.client = client
        self.where = where
        self.refused = False
        self.node_id: int | None = None

    def __call__(self, line: str) -> None:
        if _REFUSED in line:
            self.refused = True
        elif _CONNECTED in line and self.node_id is None:
            self.node_id = int(line.rsplit(":", 1)[1].strip())
            log.info(
                "node %s connected to SuperLink %s (SuperNode ID: %d)",
                self.client, self.where, self.node_id,
            )  # fmt: skip


def start(opts: NodeOptions) -> int:
    """Run the SuperNode until SIGTERM (0); a refused key or lost SuperLink exits 2."""
    host, port, ca, client = preflight(opts)
    state = opts.state
    (state / "client").mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "veilfed.launch.supernode",
        "--trusted-entities", str(trusted_entities_file(opts).absolute()),
        "--superlink", f"{host}:{port}",
        "--root-certificates", str(ca.absolute()),
        "--auth-supernode-private-key", str(opts.auth_key.absolute()),
        "--node-config", node_config(client, opts),
        "--host", "127.0.0.1",
        "--port", str(opts.port),
        "--max-wait-time", str(opts.max_wait_s),
    ]  # fmt: skip
    env = child_env(state / "supernode-home")
    stop = StopSignal()
    deadline = time.monotonic() + opts.stale_wait_s
    delay = 5.0
    with stop.installed():
        while True:
            watch = _Watch(client, f"{host}:{port}")
            node = Child("supernode", argv, env, cwd=state, on_line=watch, quiet=_routine)
            log.info(
                "node %s starting: SuperLink %s:%d over TLS; local Runtime API on 127.0.0.1:%d",
                client, host, port, opts.port,
            )  # fmt: skip
            try:
                while node.poll() is None and not stop.event.wait(0.5):
                    if watch.node_id is not None and _known_node(state) != watch.node_id:
                        write_text_atomic(state / NODE_ID_FILE, f"{watch.node_id}\n")
            finally:
                code = node.stop(opts.stop_timeout_s)
            if stop.event.is_set():
                if watch.node_id is not None and sign_off(
                    host, port, ca, opts.auth_key, watch.node_id
                ):
                    log.info("node %s signed off from SuperLink %s:%d", client, host, port)
                log.info("node %s stopped on %s", client, stop.name)
                return 0
            known = _known_node(state)
            if not (watch.refused and known is not None and time.monotonic() < deadline):
                break
            # This node connected before (its id is on record): the SuperLink most likely still
            # lists it as online after an unclean exit. That clears within its heartbeat timeout.
            log.warning(
                "SuperLink %s:%d still lists node %s (id %d) as connected; retrying in %.0fs",
                host, port, client, known, delay,
            )  # fmt: skip
            if stop.event.wait(delay):
                log.info("node %s stopped on %s", client, stop.name)
                return 0
            delay = min(delay * 2, 20.0)
    if watch.refused:
        raise UsageError(
            f"--auth-key {opts.auth_key}: SuperLink {host}:{port} refused this node (unknown node "
            "key); add its .pub to the coordinator's --auth-keys and restart the coordinator"
        )
    if watch.node_id is not None:
        raise UsageError(
            f"--superlink {host}:{port}: lost the SuperLink for more than {opts.max_wait_s:.0f}s; "
            "start the node again once the coordinator is back"
        )
    last = node.tail[-1] if node.tail else "no output"
    raise UsageError(f"flower-supernode exited with code {code}: {last}")
