"""A real federation on 127.0.0.1: SuperLink + 3 SuperNodes, TLS, node auth, 2 DP rounds.

Each node runs as its own process with its own encrypted shard bundle and auth key; the
coordinator submits the veilfed app through Flower's Control API. The run must land in MLflow
with per-task metrics and per-client ε, pass `veilfed audit`, and everything must stop within a
bounded time on SIGTERM, leaving no process behind (the ``cluster`` fixture checks).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from testkit.cluster import CONFIG, Cluster, coordinator_args, node_args

from veilfed.crypto import certs
from veilfed.launch.net import free_port

pytestmark = pytest.mark.deployment


CLIENTS = ["client-0000", "client-0001", "client-0002"]


def test_two_rounds_over_tls_with_three_nodes(
    cluster: Cluster, trust: certs.CertBundle, shards, tmp_path: Path
) -> None:
    config = tmp_path / "loopback.toml"
    config.write_text(CONFIG)  # DP; the coordinator's --he-context adds CKKS secure aggregation
    # The clients' HE keys: the coordinator gets public.ctx only, every node secret.ctx.
    keygen = cluster.run(["he", "keygen", "--out", str(tmp_path / "he")], timeout=60)
    assert keygen.returncode == 0, keygen.stderr
    address = f"127.0.0.1:{free_port()}"
    state = tmp_path / "cstate"
    coord = cluster.start(
        "coordinator",
        [
            *coordinator_args(address, trust.out, trust.auth_keys, config, state),
            "--wait-nodes", "120", "--he-context", str(tmp_path / "he/public.ctx"),
        ],
    )  # fmt: skip
    coord.wait_for(rf"SuperLink listening on https://{address}", 90)
    nodes = {}
    for cid in CLIENTS:
        shard, key = shards[cid]
        args = node_args(address, shard, key, trust.out, trust.node_key(cid), tmp_path / cid)
        # The owners mark their held-out clips evaluable; otherwise no metric leaves a node.
        he = ["--he-context", str(tmp_path / "he/secret.ctx"), "--share-eval-metrics"]
        nodes[cid] = cluster.start(cid, [*args, *he])
    for cid, proc in nodes.items():
        proc.wait_for(f"node {cid} connected to SuperLink {address}", 90)

    coord.wait_for(r"started run \d+", 120)
    code = coord.popen.wait(timeout=400)
    log = coord.text()
    assert code == 0, log[-6000:]
    assert "completed" in log
    for rnd in (1, 2):  # the ServerApp's own round lines reach the coordinator's log
        assert re.search(rf"veilfed.coordinator: round {rnd}: sampled 3, accepted 3", log), log
    run_id = coord.wait_for(r"run ([0-9a-f]{32}): 2 rounds", 5).group(1)

    # MLflow: per-task metrics and per-client ε, logged by the ServerApp behind the SuperLink.
    import mlflow

    client = mlflow.tracking.MlflowClient(cluster.env["MLFLOW_TRACKING_URI"])
    metrics = client.get_run(run_id).data.metrics
    for task in ("action", "moderation"):
        assert f"eval/{task}/accuracy" in metrics, sorted(metrics)
    assert {"he/encrypt_ms", "he/aggregate_ms", "he/bytes_ratio"} <= set(metrics), sorted(metrics)
    for cid in CLIENTS:
        eps = metrics[f"privacy/client/{cid}/eps"]
        assert 0 < eps <= 8.0
        history = client.get_metric_history(run_id, f"privacy/client/{cid}/eps")
        assert [m.step for m in history] == [1, 2]

    # The nodes trained on their own bundles: the coordinator's side holds no clips, no client
    # keys and no HE secret; each node's signing key is the one the run pinned and published.
    run_dir = state / "runs" / run_id
    assert not list(state.rglob("*.vfs")) and not list(state.rglob("signing.key"))
    assert not list(state.rglob("secret.ctx")) and not (run_dir / "shards.json").exists()
    for cid in CLIENTS:
        pinned = (run_dir / "keys" / f"{cid}.pub").read_bytes()
        assert pinned == (tmp_path / cid / "client" / "signing.key.pub").read_bytes()
        accountant = tmp_path / cid / "client" / "accountant" / f"{cid}.json"
        assert accountant.is_file()  # on the node, one for every run it joins
        published = client.download_artifacts(run_id, f"privacy/keys/{cid}.pub", str(tmp_path))
        assert Path(published).read_bytes() == pinned

    audit = cluster.run(["audit", run_id], timeout=120)
    assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr[-3000:]
    assert "## Violations\n\nnone" in audit.stdout

    start = time.monotonic()
    for cid, proc in nodes.items():
        assert proc.terminate(timeout=30) == 0, proc.text()[-3000:]
        assert f"node {cid} stopped on SIGTERM" in proc.text()
    assert time.monotonic() - start < 60
