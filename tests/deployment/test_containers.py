"""The images build, and Compose and ``podman kube play`` run a DP + HE federation that audits.

`make test-deploy` runs these (marker ``container``; `make test` leaves them out): it builds both
images with deploy/build.sh, then starts deploy/compose.yaml with podman-compose and deploy/k8s
with deploy/k8s/podman_play.py, each a coordinator, MLflow and two nodes with TLS, node
authentication, DP-SGD and CKKS secure aggregation, and runs `veilfed audit` on the finished run
inside the coordinator's container. A node container started with a key missing or wrong, or
towards a coordinator that does not answer, exits non-zero with one line and is not restarted.
"""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit import podman as pm
from testkit.podman import COMPOSE, DEPLOY, IMAGES

from veilfed.launch.net import free_port

pytestmark = [
    pytest.mark.container,
    pytest.mark.skipif(pm.missing() is not None, reason=str(pm.missing())),
]

RUN_DONE = r"run ([0-9a-f]{32}): 2 rounds"
NODE = "veilfed-node:latest"


@pytest.fixture(scope="module")
def images() -> None:
    pm.run(str(DEPLOY / "build.sh"), timeout=3600)
    for image in IMAGES:
        pm.podman("image", "exists", image)


METRICS = (
    "import json, sys, mlflow;"
    "print(json.dumps(mlflow.MlflowClient().get_run(sys.argv[1]).data.metrics))"
)


def check_run(container: str, run_id: str) -> None:
    """The finished run, from inside the coordinator's container: `veilfed audit` against the
    run's pinned keys passes, and MLflow holds HE timings, per-client ε and per-task metrics."""
    keys = f"/state/runs/{run_id}/keys"
    result = pm.podman("exec", container, "veilfed", "audit", run_id, "--keys", keys, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Privacy audit — OK: 4 claims from 2 clients verified" in result.stdout, result.stdout
    metrics = json.loads(pm.podman("exec", container, "python", "-c", METRICS, run_id).stdout)
    assert {"he/encrypt_ms", "he/aggregate_ms"} <= set(metrics), sorted(metrics)
    assert "eval/action/accuracy" in metrics, sorted(metrics)
    for cid in ("client-0000", "client-0001"):
        assert 0 < metrics[f"privacy/client/{cid}/eps"] <= 8.0


def test_images_run_as_non_root_and_hold_no_keys(images: None) -> None:
    for image in IMAGES:
        assert pm.podman("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()
        found = pm.podman(
            "run", "--rm", "--entrypoint", "sh", image, "-c",
            "id -u; find / -xdev \\( -name '*.key' -o -name '*.ctx' -o -name '*.vfs' \\) -print;"
            " ls -d /wheels /src /root/.cache /certs /he 2>/dev/null;"
            " command -v gcc cc || true",
        ).stdout.split()  # fmt: skip
        assert found[0] == str(pm.UID), image
        # No key, shard or HE context, no build inputs, caches or compilers in the final layer.
        assert found[1:] == [], (image, found)


@pytest.fixture
def compose_run(images: None, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """deploy/compose.yaml up under a unique project; (project, service -> container)."""
    secrets = pm.prepare(tmp_path / "deploy", "coordinator")
    project = f"vf{uuid.uuid4().hex[:8]}"
    env = {"VEILFED_SECRETS": str(secrets), "FLEET_PORT": str(free_port())}
    args = [COMPOSE, "-p", project, "-f", str(DEPLOY / "compose.yaml")]
    try:
        pm.run(*args, "up", "-d", env=env, timeout=300)
        yield project, pm.containers(f"io.podman.compose.project={project}")
    finally:
        pm.run(*args, "down", "-v", "-t", "30", env=env, timeout=300, check=False)


def test_compose_runs_a_dp_he_federation_that_audits(compose_run) -> None:
    project, names = compose_run
    assert set(names) == {"mlflow", "coordinator", "node-0", "node-1"}
    coord = names["coordinator"]
    pm.wait_log(coord, r"round 1: sampled 2, accepted 2", 900)
    run_id = pm.wait_log(coord, RUN_DONE, 900).group(1)
    check_run(coord, run_id)
    # Only the Fleet port is published; the nodes are not restarted whatever happens to them.
    for service, name in names.items():
        ports = pm.podman("port", name).stdout.split()
        assert ports[:1] == (["9092/tcp"] if service == "coordinator" else []), (service, ports)
        assert pm.podman("exec", name, "id", "-u").stdout.strip() == str(pm.UID), service
        policy = pm.podman("inspect", "--format", "{{.HostConfig.RestartPolicy.Name}}", name)
        if service.startswith("node-"):
            assert policy.stdout.strip() in ("", "no"), policy.stdout
    # The coordinator's container holds the public CKKS context only.
    assert pm.podman("exec", coord, "ls", "/he").stdout.split() == ["public.ctx"]


def node_container(secrets: Path, *, key: str | None, shard_key: str, superlink: str) -> list[str]:
    """`podman run` of node-0 as deploy/compose.yaml starts it, with a chosen key mount."""
    mounts = {
        "/certs/ca.pem": secrets / "certs/ca.pem",
        "/certs/trusted-entities.yaml": secrets / "certs/trusted-entities.yaml",
        "/data/client-0000.vfs": secrets / "data/client-0000.vfs",
        "/data/client-0000.key": secrets / f"data/{shard_key}.key",
        "/he/secret.ctx": secrets / "he/secret.ctx",
    }
    if key is not None:
        mounts["/certs/node.key"] = secrets / f"certs/nodes/{key}.key"
    volumes = [f"--volume={src}:{dst}:ro" for dst, src in mounts.items()]
    return [
        "run", "-d", "--name", f"vf-bad-{uuid.uuid4().hex[:8]}", *volumes, NODE,
        f"--superlink={superlink}", "--shard=/data/client-0000.vfs",
        "--key-file=/data/client-0000.key", "--certs=/certs", "--auth-key=/certs/node.key",
        "--state=/state", "--budget=8", "--he-context=/he/secret.ctx", "--connect-tries=3",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no-key-mount", r"/certs/node\.key: private key not found; check --auth-key"),
        ("other-nodes-key", r"client-0000\.vfs.*bundle is for client client-0000"),
        ("silent-coordinator", r"SuperLink unreachable after 3 tries"),
    ],
)
def test_bad_node_container_exits_with_one_line(
    images: None, tmp_path: Path, case: str, expected: str
) -> None:
    secrets = pm.prepare(tmp_path / "deploy", "coordinator")
    silent = f"host.containers.internal:{free_port()}"  # the host, on a port nothing serves
    args = node_container(
        secrets,
        key=None if case == "no-key-mount" else "client-0000",
        shard_key="client-0001" if case == "other-nodes-key" else "client-0000",
        superlink=silent if case == "silent-coordinator" else "coordinator:9092",
    )
    name = args[args.index("--name") + 1]
    pm.podman(*args)
    try:
        deadline = time.monotonic() + 120
        while pm.state(name)[0] not in ("exited", "stopped") and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(3)  # time for a restart, were there one
        status, code, restarts = pm.state(name)
        log = pm.logs(name)
        errors = [line for line in log.splitlines() if line.startswith("error:")]
        assert status == "exited" and code == 2 and restarts == 0, (status, code, restarts, log)
        assert len(errors) == 1 and re.search(expected, errors[0]), log
        assert log.rstrip().splitlines()[-1] == errors[0], log
    finally:
        pm.podman("rm", "-f", name, check=False)


@pytest.fixture
def kube_play(images: None, tmp_path: Path) -> Iterator[Path]:
    """deploy/k8s played by deploy/k8s/podman_play.py; yields the secrets' directory."""
    secrets = pm.prepare(
        tmp_path / "k8s", "veilfed-coordinator", "veilfed-coordinator.veilfed.svc.cluster.local"
    )
    tag = uuid.uuid4().hex[:6]
    play = [
        sys.executable, str(DEPLOY / "k8s/podman_play.py"), "--secrets", str(secrets),
        "--network", f"vf-k8s-{tag}", "--subnet", "10.89.178.0/24",
        "--workdir", str(tmp_path / "play"),
    ]  # fmt: skip
    try:
        pm.run(*play[:2], "up", *play[2:], timeout=600)
        yield secrets
    finally:
        pm.run(*play[:2], "down", "--volumes", *play[2:], timeout=300, check=False)


def test_kube_play_runs_a_dp_he_federation_that_audits(kube_play: Path) -> None:
    coord = "veilfed-coordinator-pod-0-coordinator"
    for i in range(2):
        cid = f"client-{i:04d}"
        node = f"veilfed-{cid}-pod-0-node"
        pm.wait_log(node, rf"waiting for /data/{cid}\.vfs", 300)
        pm.podman("cp", str(kube_play / f"data/{cid}.vfs"), f"{node}:/data/{cid}.vfs")
    pm.wait_log(coord, r"round 1: sampled 2, accepted 2", 900)
    run_id = pm.wait_log(coord, RUN_DONE, 900).group(1)
    check_run(coord, run_id)
    # Each node pod holds its own keys only; the coordinator's, the public CKKS context only.
    for i in range(2):
        node = f"veilfed-client-{i:04d}-pod-0-node"
        held = pm.podman("exec", node, "ls", "/secrets/node").stdout.split()
        assert sorted(held) == [
            "ca.pem",
            f"client-{i:04d}.key",
            f"data-client-{i:04d}.key",
            "trusted-entities.yaml",
        ]
    assert pm.podman("exec", coord, "ls", "/he").stdout.split() == ["public.ctx"]
