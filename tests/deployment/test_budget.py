"""A node whose ε budget is spent declines further rounds, saying so in its own log."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from testkit.cluster import CONFIG, Cluster, coordinator_args, node_args

from veilfed.crypto import certs
from veilfed.launch.net import free_port

pytestmark = pytest.mark.deployment

CLIENTS = ("client-0000", "client-0001")


# Real processes, about 2 minutes: `make test-slow`. The same refusal through the real
# ServerApp and ClientApp in process: coordinator/test_server_app.py (spent client declines).
@pytest.mark.slow
def test_spent_budget_declines_with_a_clear_log_line(
    cluster: Cluster, trust: certs.CertBundle, shards, tmp_path: Path
) -> None:
    # σ is calibrated for ε = 8 after both rounds; each node's own --budget 6.5 fits round 1
    # only (the run asks no budget of its own: its ε of 8 would allow both).
    config = tmp_path / "budget.toml"
    config.write_text(CONFIG.replace("clients = 3", "clients = 2"))
    auth = tmp_path / "auth-keys"
    auth.mkdir()
    for cid in CLIENTS:
        (auth / f"{cid}.pub").write_bytes((trust.auth_keys / f"{cid}.pub").read_bytes())
    address = f"127.0.0.1:{free_port()}"
    args = coordinator_args(address, trust.out, auth, config, tmp_path / "cstate")
    coord = cluster.start("coordinator", [*args, "--wait-nodes", "120"])
    coord.wait_for(f"SuperLink listening on https://{address}", 90)
    nodes = {}
    for cid in CLIENTS:
        shard, key = shards[cid]
        own_budget = node_args(
            address, shard, key, trust.out, trust.node_key(cid), tmp_path / cid, "--budget", "6.5"
        )
        nodes[cid] = cluster.start(cid, own_budget)
    code = coord.popen.wait(timeout=400)
    log = coord.text()
    assert code == 0, log[-6000:]
    assert "round 1: sampled 2, accepted 2" in log
    assert re.search(r"round 2: sampled 2, accepted 0, .*declined 2", log), log
    for cid, proc in nodes.items():
        proc.wait_for(rf"round 2 declined: client {cid}: declining to train: .*> budget 6\.5", 30)
        assert proc.text().count("round 2 declined") == 1  # one line, not one per handler
