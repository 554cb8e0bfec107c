"""Node life on real processes: a node restarted mid-run rejoins under the same node id, and a
coordinator restarted with ``--resume`` continues the run with the clients' ε carried over.

One run covers both (3 rounds, 2 nodes) to keep the suite short: after round 1 a node is
restarted; once round 2 is checkpointed the coordinator is stopped and resumed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from testkit.cluster import CONFIG, Cluster, coordinator_args, node_args

from veilfed.crypto import certs
from veilfed.launch.net import free_port

# Restart and resume take about 3 minutes on 2 cores: `make test-slow` runs it, `make test` not.
pytestmark = [pytest.mark.deployment, pytest.mark.slow]

CLIENTS = ("client-0000", "client-0001")
NODE_ID = r"node {cid} connected to SuperLink \S+ \(SuperNode ID: (\d+)\)"


def test_node_restart_rejoins_and_coordinator_resumes(
    cluster: Cluster, trust: certs.CertBundle, shards, tmp_path: Path
) -> None:
    config = tmp_path / "life.toml"
    config.write_text(
        CONFIG.replace("clients = 3", "clients = 2").replace("rounds = 2", "rounds = 3")
    )
    auth = tmp_path / "auth-keys"
    auth.mkdir()
    for cid in CLIENTS:
        (auth / f"{cid}.pub").write_bytes((trust.auth_keys / f"{cid}.pub").read_bytes())
    address = f"127.0.0.1:{free_port()}"
    state = tmp_path / "cstate"
    args = [*coordinator_args(address, trust.out, auth, config, state), "--wait-nodes", "120"]
    coord = cluster.start("coordinator-a", args)
    coord.wait_for(f"SuperLink listening on https://{address}", 90)

    def start_node(cid: str, name: str):  # type: ignore[no-untyped-def]
        shard, key = shards[cid]
        # The same state directory across restarts: accountant and node id persist there.
        return cluster.start(
            name, node_args(address, shard, key, trust.out, trust.node_key(cid), tmp_path / cid)
        )

    steady = start_node("client-0000", "client-0000")
    first = start_node("client-0001", "client-0001-a")
    first_id = first.wait_for(NODE_ID.format(cid="client-0001"), 90).group(1)
    steady.wait_for("connected to SuperLink", 90)

    # -- a node restarted mid-run rejoins ---------------------------------------------------------
    coord.wait_for(r"aggregate_train: Received 2 results", 300)  # round 1 trained
    assert first.terminate(timeout=30) == 0
    assert "signed off from SuperLink" in first.text()  # by Flower or by veilfed
    again = start_node("client-0001", "client-0001-b")
    assert again.wait_for(NODE_ID.format(cid="client-0001"), 90).group(1) == first_id

    # -- the coordinator restarted with --resume continues with the same ε ----------------------
    coord.wait_count("configure_train", 3, 300)  # round 3 configured: round 2 checkpointed
    assert coord.terminate(timeout=30) == 0
    assert "stopping run" in coord.text()
    (run_id,) = [p.name for p in (state / "runs").iterdir() if (p / "settings.json").exists()]

    import mlflow

    client = mlflow.tracking.MlflowClient(cluster.env["MLFLOW_TRACKING_URI"])

    def eps(cid: str) -> dict[int, float]:
        history = client.get_metric_history(run_id, f"privacy/client/{cid}/eps")
        return {m.step: m.value for m in history}

    before = {cid: eps(cid) for cid in CLIENTS}
    assert all(sorted(b) == [1, 2] for b in before.values()), before

    resumed = cluster.start("coordinator-b", [*args, "--resume", run_id])
    code = resumed.popen.wait(timeout=400)
    assert code == 0, resumed.text()[-6000:]
    resumed.wait_for(rf"run {run_id}: 3 rounds", 5)
    for cid in CLIENTS:
        after = eps(cid)
        assert sorted(after) == [1, 2, 3], after
        assert after[1] == before[cid][1] and after[2] == before[cid][2]  # carried over
        assert after[1] < after[2] < after[3]  # and still accumulating
    audit = cluster.run(["audit", run_id], timeout=120)
    assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr[-3000:]
