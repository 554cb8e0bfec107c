"""`veilfed simulate --ray-address` on a Ray cluster the user already runs, and the launcher config
for one (deploy/ray/cluster.yaml).

The cluster is real: a head and a worker node started with `ray start` on this machine, one CPU
each, token authentication on, as docs/deploy.md tells users to run theirs. One CPU per node and
per client means Flower's actor pool holds one actor per node, so a 2-client round must train on
both nodes, which the test watches at the process level.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from testkit.cluster import TAG_VAR, tagged_pids
from testkit.fed import write_config
from testkit.ray_cluster import RayCluster

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "deploy" / "ray" / "cluster.yaml"
VEILFED = str(Path(sys.executable).with_name("veilfed"))
CLIENTS = {"client-0000", "client-0001"}
# Appended to [federated]: one CPU per virtual client, as many as the cluster's nodes have; HE
# secure aggregation over the two clients.
EXTRA = "cpus_per_client = 1.0\n[he]\nmin_contributors = 2\n"
RUNNING = "ray::ClientAppActor.run"  # a Ray worker's title while Flower's actor runs a ClientApp


def _base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.pop("PYTEST_CURRENT_TEST", None)
    env |= {
        TAG_VAR: uuid.uuid4().hex,
        "RAY_USAGE_STATS_ENABLED": "0",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    return env


@pytest.fixture
def ray_cluster(tmp_path: Path) -> Iterator[RayCluster]:
    """Head + worker with token authentication; afterwards no process of it (raylets included)
    may be left."""
    token = tmp_path / "ray-token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = _base_env(tmp_path) | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    cluster = RayCluster(env)
    try:
        cluster.start_node("head", head=True)
        cluster.start_node("worker")
        cluster.wait_nodes(timeout=90)
        yield cluster
    finally:
        left = cluster.stop()
        assert not left, f"Ray processes survived SIGKILL: {left}"
        assert not tagged_pids(cluster.tag)
        assert not cluster.root.exists()


def _simulate(cwd: Path, env: dict[str, str], config: Path, name: str, *flags: str) -> dict:
    out = cwd / f"{name}.json"
    res = subprocess.run(
        [VEILFED, "simulate", "--config", str(config), "--he", "--runs-dir", str(cwd / name),
         "--summary-json", str(out), *flags],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, f"{name}: {res.returncode}\n{(res.stdout + res.stderr)[-5000:]}"
    return json.loads(out.read_text())


@pytest.mark.deployment
@pytest.mark.slow
def test_simulate_runs_its_clients_on_both_nodes_of_an_existing_cluster(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    config = write_config(tmp_path, clips=8, clients=2, rounds=1, extra=EXTRA)
    # The reference: the same run on veilfed's own local Ray instance, before any cluster work.
    local = _simulate(tmp_path, _base_env(tmp_path), config, "local")

    # Ray's token authentication is on: an outsider's client is refused outright.
    outsider = {k: v for k, v in ray_cluster.env.items() if not k.startswith("RAY_AUTH")}
    refused = ray_cluster.ray(["status", "--address", ray_cluster.address], env=outsider)
    assert refused.returncode != 0
    assert "InvalidAuthToken" in refused.stdout + refused.stderr

    with ray_cluster.watch_workers() as seen:
        remote = _simulate(
            tmp_path, ray_cluster.env, config, "cluster", "--ray-address", ray_cluster.address
        )

    assert remote.keys() == local.keys()
    assert remote["rounds"] == local["rounds"] == 1
    assert remote["clients"].keys() == local["clients"].keys() == CLIENTS
    assert remote["metrics"].keys() == local["metrics"].keys()
    assert remote["he"]["enabled"] and local["he"]["enabled"]
    for cid, report in remote["clients"].items():
        # ε is a function of the privacy settings alone, wherever the client trained
        assert report["epsilon"] == pytest.approx(local["clients"][cid]["epsilon"], rel=1e-12)
        assert report == local["clients"][cid] | {"epsilon": report["epsilon"]}
        assert 0 < report["epsilon"] <= 8.0
    # every round's client work ran in Ray workers on both nodes of the user's cluster
    ran_on = {node for node, titles in seen.items() if RUNNING in titles}
    assert ran_on == {"head", "worker"}, f"titles seen per node: {seen}"


# -- the cluster launcher config -------------------------------------------------------------------


def _cluster_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_is_a_valid_local_provider_config() -> None:
    cfg = _cluster_config()
    provider = cfg["provider"]
    assert provider["type"] == "local"
    # the local provider's manual mode needs both; `ray up` aborts without them
    assert isinstance(provider["head_ip"], str) and provider["head_ip"]
    workers = provider["worker_ips"]
    assert workers and len(set(workers)) == len(workers) and provider["head_ip"] not in workers
    assert cfg["auth"]["ssh_user"]
    assert cfg["min_workers"] <= cfg["max_workers"] <= len(workers)
    for key in ("cluster_name", "setup_commands", "head_start_ray_commands",
                "worker_start_ray_commands"):  # fmt: skip
        assert cfg[key], key
    # what `ray up` does first: fill in the local provider's node type, then Ray's own schema
    prepared = prepare_config(cfg)
    validate_config(prepared)
    assert prepared["available_node_types"]["local.cluster.node"]["max_workers"] == len(workers)


def test_cluster_yaml_nodes_share_one_port_one_env_and_token_auth() -> None:
    cfg = _cluster_config()
    head = " ".join(cfg["head_start_ray_commands"])
    worker = " ".join(cfg["worker_start_ray_commands"])
    port = re.search(r"ray start --head --port=(\d+)", head).group(1)  # type: ignore[union-attr]
    assert f"ray start --address=$RAY_HEAD_IP:{port}" in worker
    # the driver's address in the header comment is the head's GCS port
    assert f"--ray-address 127.0.0.1:{port}" in CLUSTER_YAML.read_text()
    for starts in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        assert any("RAY_AUTH_MODE=token" in c and "ray start" in c for c in starts)
    setup = cfg["setup_commands"]
    # every later login shell (launcher commands, `ray exec` running the driver) uses the token
    assert any("export RAY_AUTH_MODE=token" in c and "~/.bashrc" in c for c in setup)
    assert "~/.ray/auth_token" in cfg["file_mounts"]
    # one venv: the same Python and Ray for the nodes and the driver, veilfed installed into it
    assert any(re.search(r"~/venv/bin/pip install (-e )?~/veilfed", c) for c in setup)
    assert all("~/venv/bin/ray" in c for c in cfg["head_start_ray_commands"])
    for remote, local in cfg["file_mounts"].items():
        if not local.startswith("~/"):  # the operator's own files (the token) are not in the repo
            assert (ROOT / local).exists(), f"file_mounts {remote}: {local} missing"
