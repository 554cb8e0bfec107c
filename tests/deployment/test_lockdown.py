"""Attacks on a live coordinator and node: only nodes reach the SuperLink; nodes run signed code.

An outsider holds the deployment's ``ca.pem`` and a node key of its own and talks to the
coordinator's public address with Flower's own clients: it can neither register its key, list
nodes nor start a run, and Flower's Fleet API refuses its self-registration. Then, through the
loopback Control API (what a compromised coordinator process, or a mistake, could do), runs are
started with an app bundle whose ClientApp would write a file on the node: unsigned and signed
by a foreign key, the node refuses it before any of its code runs and logs one line; signed by
the deployment's app-signing key, the same bundle runs (the positive control).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from flwr.proto.control_pb2 import RegisterNodeRequest
from flwr.proto.fleet_pb2 import ActivateNodeRequest, RegisterNodeFleetRequest
from flwr.supercore.primitives.asymmetric import public_key_to_bytes
from flwr.supernode.fleet_http_client import FleetHttpClient
from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor
from testkit.cluster import Cluster, coordinator_args, node_args

from veilfed.crypto import certs
from veilfed.crypto.app_signing import SIGNATURE_KEY, load_signing_key
from veilfed.errors import UsageError
from veilfed.launch.control import ControlClient
from veilfed.launch.net import free_port
from veilfed.launch.supernode import REFUSED

pytestmark = pytest.mark.deployment


def listening(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (Linux /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def start_coordinator(
    cluster: Cluster, trust: certs.CertBundle, tmp_path: Path, registered: list[str]
) -> tuple[str, int]:
    """A coordinator that registered ``registered`` and waits for all of them (never runs)."""
    auth = tmp_path / "auth-keys"
    auth.mkdir()
    for cid in registered:
        shutil.copy(trust.auth_keys / f"{cid}.pub", auth)
    config = tmp_path / "exp.toml"
    config.write_text('name = "lockdown"\n')
    address, control = f"127.0.0.1:{free_port()}", free_port()
    coord = cluster.start(
        "coordinator",
        coordinator_args(
            address, trust.out, auth, config, tmp_path / "cstate",
            "--control-port", str(control), "--wait-nodes", "900",
        ),
    )  # fmt: skip
    coord.wait_for(rf"SuperLink listening on https://{address} \(Fleet API only", 90)
    coord.wait_for(f"registered {len(registered)} node key", 30)
    return address, control


def test_outsider_with_the_ca_cannot_register_list_or_start_runs(
    cluster: Cluster, trust: certs.CertBundle, tmp_path: Path
) -> None:
    address, control = start_coordinator(cluster, trust, tmp_path, ["client-0000"])
    fleet_port = int(address.rsplit(":", 1)[1])
    assert listening(control) == {"127.0.0.1"}  # the Control API is bound to loopback only
    assert listening(fleet_port) == {"127.0.0.1"}  # --address, as given

    own = ec.generate_private_key(ec.SECP384R1())
    raw = public_key_to_bytes(own.public_key())  # what `flwr supernode register` sends
    app = tmp_path / "app"
    app.mkdir()
    write_probe(app, tmp_path / "marker", tmp_path / "result.json")
    with ControlClient(address, trust.ca_cert, tmp_path / "outsider-home") as outsider:
        with pytest.raises(httpx.HTTPStatusError) as listed:
            outsider.registered_keys()  # ListNodes
        assert listed.value.response.status_code == 404
        with pytest.raises(httpx.HTTPStatusError) as registered:
            outsider._client.RegisterNode(RegisterNodeRequest(public_key=raw, name="intruder"))
        assert registered.value.response.status_code == 404
        with pytest.raises(UsageError, match="refused the run"):
            outsider.start_run(app, None)

    # The Fleet API is public, but registration there is off: a key must come from --auth-keys.
    with FleetHttpClient.from_server_address(
        address, False, trust.ca_cert.read_bytes(),
        interceptors=[NodeAuthHttpInterceptor(own, own.public_key())],
    ) as fleet:  # fmt: skip
        with pytest.raises(httpx.HTTPStatusError):
            fleet.RegisterNode(RegisterNodeFleetRequest(public_key=raw))
        with pytest.raises(httpx.HTTPStatusError):
            fleet.ActivateNode(ActivateNodeRequest(public_key=raw, heartbeat_interval=30))

    # The operator, on the coordinator's machine, still sees the one registered key.
    with ControlClient(f"127.0.0.1:{control}", trust.ca_cert, tmp_path / "ctl-home") as ctl:
        assert len(ctl.registered_keys()) == 1
    coord = cluster.procs[0]
    assert "refused /v1/control/register-node from 127.0.0.1" in coord.text()
    assert "refused /v1/control/start-run from 127.0.0.1" in coord.text()


PROBE = '''\
"""An app bundle an attacker would submit: its ClientApp runs code on the node."""
import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

client = ClientApp()


@client.query()
def query(msg: Message, context: Context) -> Message:
    Path(str(context.run_config["marker"])).write_text(json.dumps(dict(context.node_config)))
    return Message(RecordDict({"r": ConfigRecord({"ran": 1})}), reply_to=msg)


server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    nodes, deadline = [], time.monotonic() + 60
    while not nodes and time.monotonic() < deadline:
        nodes = list(grid.get_node_ids())
        time.sleep(0.5)
    msgs = [
        Message(RecordDict({"q": ConfigRecord({"x": 1})}), dst_node_id=n, message_type="query")
        for n in nodes
    ]
    replies = list(grid.send_and_receive(msgs, timeout=120))
    out = {
        "nodes": len(nodes),
        "errors": [r.error.reason for r in replies if r.has_error()],
        "ok": sum(not r.has_error() for r in replies),
    }
    Path(str(context.run_config["result"])).write_text(json.dumps(out))
'''


def write_probe(directory: Path, marker: Path, result: Path) -> None:
    (directory / "probe_app.py").write_text(PROBE)
    (directory / "pyproject.toml").write_text(
        "\n".join(
            [
                "[build-system]",
                'requires = ["hatchling"]',
                'build-backend = "hatchling.build"',
                "[project]",
                'name = "probe"',
                'version = "1.0.0"',
                'license = "Apache-2.0"',
                "dependencies = []",
                "[tool.flwr.app]",
                'publisher = "outsider"',
                "[tool.flwr.app.components]",
                'serverapp = "probe_app:server"',
                'clientapp = "probe_app:client"',
                "[tool.flwr.app.config]",
                f"marker = {json.dumps(str(marker))}",
                f"result = {json.dumps(str(result))}",
                f'{SIGNATURE_KEY} = ""',
                "",
            ]
        )
    )


def test_node_runs_only_bundles_signed_by_a_trusted_key(
    cluster: Cluster, trust: certs.CertBundle, shards, tmp_path: Path
) -> None:
    # client-0001 is registered but never starts, so the coordinator never starts its own run.
    address, control = start_coordinator(cluster, trust, tmp_path, ["client-0000", "client-0001"])
    shard, key = shards["client-0000"]
    node = cluster.start(
        "node",
        node_args(address, shard, key, trust.out, trust.node_key("client-0000"), tmp_path / "n0"),
    )
    node.wait_for("node client-0000 connected to SuperLink", 90)

    keys = {
        "unsigned": None,
        "foreign": ed25519.Ed25519PrivateKey.generate(),
        "trusted": load_signing_key(trust.app_signing_key),
    }
    results = {}
    with ControlClient(f"127.0.0.1:{control}", trust.ca_cert, tmp_path / "ctl-home") as ctl:
        for case, signing_key in keys.items():
            app = tmp_path / f"app-{case}"
            app.mkdir()
            marker, result = tmp_path / f"ran-{case}", tmp_path / f"result-{case}.json"
            write_probe(app, marker, result)
            run_id = ctl.start_run(app, signing_key)
            deadline = time.monotonic() + 240
            while not ctl.run_status(run_id).finished and time.monotonic() < deadline:
                time.sleep(1)
            status = ctl.run_status(run_id)
            assert status.ok, (case, status, node.text()[-3000:])
            results[case] = (run_id, json.loads(result.read_text()), marker.exists())

    log = node.text()
    for case, reason in (("unsigned", "is not signed"), ("foreign", "not a trusted entity")):
        run_id, out, ran = results[case]
        assert not ran, f"{case}: the bundle's code ran on the node"
        assert out["nodes"] == 1 and out["ok"] == 0 and len(out["errors"]) == 1, (case, out)
        refusals = [line for line in log.splitlines() if f"run {run_id}: {REFUSED}" in line]
        assert len(refusals) == 1 and reason in refusals[0], (case, refusals)
    run_id, out, ran = results["trusted"]
    assert ran and out == {"nodes": 1, "errors": [], "ok": 1}, out  # signed code does run
    assert f"run {run_id}: {REFUSED}" not in log
