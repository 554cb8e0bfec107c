"""A real federation on 127.0.0.1: SuperLink + 3 SuperNodes, TLS, node auth, 2 DP rounds.

Each node runs as its own process with its own encrypted shard bundle and auth key; the
coordinator submits the veilfed app through Flower's Control API. The run must land in MLflow
with per-task metrics and per-client ε, pass `veilfed audit`, and everything must stop within a
bounded time on SIGTERM, leaving no process behind (the ``cluster`` fixture checks).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cluster_kit import Cluster, coordinator_args, node_args

from veilfed.crypto import certs
from veilfed.deploy.net import free_port

pytestmark = pytest.mark.deployment

CONFIG = """
name = "loopback"
[world]
clips = 12
frames = 4
size = 32
seed = 0
[model]
dim = 16
pixel_dim = 8
encoders = { video = "conv2p1d", audio = "logmel_conv", text = "text_transformer" }
fusion = "concat"
tasks = { action = 1.0, moderation = 1.0 }
[train]
batch_size = 4
lr = 0.05
seed = 0
[privacy]
enabled = true
epsilon = 8.0
delta = 1e-3
max_grad_norm = 1.0
[federated]
clients = 3
rounds = 2
fraction = 1.0
fraction_evaluate = 1.0
min_fit_clients = 2
strategy = "fedavg"
local_epochs = 1
holdout = 0.25
"""

CLIENTS = ["client-0000", "client-0001", "client-0002"]


def test_two_rounds_over_tls_with_three_nodes(
    cluster: Cluster, trust: certs.CertBundle, shards, tmp_path: Path
) -> None:
    config = tmp_path / "loopback.toml"
    config.write_text(CONFIG)
    address = f"127.0.0.1:{free_port()}"
    coord = cluster.start(
        "coordinator",
        [
            *coordinator_args(address, trust.out, trust.auth_keys, config, tmp_path / "cstate"),
            "--wait-nodes", "120",
        ],
    )  # fmt: skip
    coord.wait_for(rf"SuperLink listening on https://{address}", 90)
    nodes = {}
    for cid in CLIENTS:
        shard, key = shards[cid]
        nodes[cid] = cluster.start(
            cid,
            node_args(address, shard, key, trust.out, trust.node_key(cid), tmp_path / cid),
        )
    for cid, proc in nodes.items():
        proc.wait_for(f"node {cid} connected to SuperLink {address}", 90)

    coord.wait_for(r"started run \d+", 120)
    code = coord.popen.wait(timeout=400)
    log = coord.text()
    assert code == 0, log[-6000:]
    assert "completed" in log
    run_id = coord.wait_for(r"run ([0-9a-f]{32}): 2 rounds", 5).group(1)

    # MLflow: per-task metrics and per-client ε, logged by the ServerApp behind the SuperLink.
    import mlflow

    client = mlflow.tracking.MlflowClient(cluster.env["MLFLOW_TRACKING_URI"])
    metrics = client.get_run(run_id).data.metrics
    for task in ("action", "moderation"):
        assert f"eval/{task}/accuracy" in metrics, sorted(metrics)
    for cid in CLIENTS:
        eps = metrics[f"privacy/client/{cid}/eps"]
        assert 0 < eps <= 8.0
        history = client.get_metric_history(run_id, f"privacy/client/{cid}/eps")
        assert [m.step for m in history] == [1, 2]

    audit = cluster.run(["audit", run_id], timeout=120)
    assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr[-3000:]
    assert "## Violations\n\nnone" in audit.stdout

    start = time.monotonic()
    for cid, proc in nodes.items():
        assert proc.terminate(timeout=30) == 0, proc.text()[-3000:]
        assert f"node {cid} stopped on SIGTERM" in proc.text()
    assert time.monotonic() - start < 60
