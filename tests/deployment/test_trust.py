"""Only registered nodes get in, over TLS that nodes verify; SIGTERM shuts everything down."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from testkit.cluster import Cluster, coordinator_args, node_args

from veilfed.crypto import certs
from veilfed.launch.net import free_port

pytestmark = pytest.mark.deployment


def test_unregistered_node_and_wrong_ca_refused(
    cluster: Cluster, trust: certs.CertBundle, shards, tmp_path: Path
) -> None:
    auth = tmp_path / "auth-keys"  # only client-0000 is registered
    auth.mkdir()
    shutil.copy(trust.auth_keys / "client-0000.pub", auth)
    config = tmp_path / "exp.toml"
    config.write_text('name = "trust"\n')
    address = f"127.0.0.1:{free_port()}"
    coord = cluster.start(
        "coordinator",
        coordinator_args(
            address, trust.out, auth, config, tmp_path / "cstate", "--wait-nodes", "300"
        ),
    )
    coord.wait_for(rf"SuperLink listening on https://{address}", 90)
    coord.wait_for("registered 1 node key", 30)

    shard, key = shards["client-0001"]
    unknown = cluster.run(
        node_args(address, shard, key, trust.out, trust.node_key("client-0001"), tmp_path / "n1"),
        timeout=120,
    )
    assert unknown.returncode == 2, unknown.stderr
    last = unknown.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --auth-key") and "unknown node key" in last, unknown.stderr

    other = certs.create_bundle(tmp_path / "other-ca", 1)
    shard, key = shards["client-0000"]
    wrong_ca = cluster.run(
        node_args(address, shard, key, other.out, trust.node_key("client-0000"), tmp_path / "n0"),
        timeout=60,
    )
    assert wrong_ca.returncode == 2
    assert "wrong CA" in wrong_ca.stderr.strip().splitlines()[-1], wrong_ca.stderr

    start = time.monotonic()
    assert coord.terminate(timeout=30) == 0
    assert time.monotonic() - start < 30
    assert "stopped on SIGTERM before the run started" in coord.text()


def test_coordinator_address_not_in_certificate(
    cluster: Cluster, trust: certs.CertBundle, tmp_path: Path
) -> None:
    """Nodes could never verify a SuperLink whose address the certificate does not name."""
    config = tmp_path / "exp.toml"
    config.write_text('name = "san"\n')
    address = f"127.0.0.2:{free_port('127.0.0.2')}"
    args = coordinator_args(address, trust.out, trust.auth_keys, config, tmp_path / "cstate")
    res = cluster.run(args, timeout=120)
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --address 127.0.0.2:") and "--host 127.0.0.2" in last, last
