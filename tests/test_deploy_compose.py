"""deploy/compose.yaml, and the README's `podman run` of a node on a machine of its own.

Services build the images the README builds, from their Dockerfiles, with only the base image
swappable; every process runs under tini. Only the coordinator publishes a port, the Fleet API's
(the Control API never leaves its container), and MLflow accepts the coordinator's requests.
Every bind mount is the experiment or a file `deploy/prepare.sh deploy ...` writes: the
coordinator gets public.ctx, its TLS key and the app-signing key, never secret.ctx; each node
gets secret.ctx, the trusted entities and its own keys and shard, never another client's. A node
that cannot start exits once, and the README's stand-alone node runs as Compose's node-0.
"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from testkit.deploy_files import (  # noqa: F401 (fixtures, requested by name)
    CONTROL_PORT,
    DEPLOY,
    EXPERIMENT,
    NODES,
    PORT,
    ROOT,
    SECRETS_DIR,
    TINI,
    build_args,
    built_images,
    cert_files_fixture,
    check_flags,
    check_he_floor,
    check_node_budget,
    flags,
    he_files_fixture,
    instructions,
    mounts_of,
    prepared_fixture,
    readme_command,
    readme_prepare,
    volume,
)

from veilfed.crypto.he_keys import PUBLIC_NAME, SECRET_NAME


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def node_services(compose: dict[str, Any]) -> list[str]:
    return sorted(name for name in compose["services"] if re.fullmatch(r"node-\d+", name))


def test_compose_services_images_and_builds(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"mlflow", "coordinator", *(f"node-{i}" for i in range(NODES))}
    images = built_images()
    built = {}
    for name, svc in services.items():
        if "build" not in svc:
            continue
        assert svc["image"] in images, f"{name}: image {svc['image']} is not built"
        build = svc["build"]
        dockerfile = (DEPLOY / build["context"] / build["dockerfile"]).resolve()
        assert dockerfile == (ROOT / images[svc["image"]]).resolve(), name
        # Only the base image can be swapped, and its default is the Dockerfile's.
        args = build_args(instructions(dockerfile))
        assert build.get("args", {}) == {"BASE_IMAGE": f"${{BASE_IMAGE:-{args['BASE_IMAGE']}}}"}
        built[svc["image"]] = dockerfile
    assert set(built) == set(images) and "build" not in services["mlflow"]
    for name, svc in services.items():
        assert svc["image"] in built, f"{name}: image {svc['image']} is built by no service"
        entry = svc.get("entrypoint") or json.loads(
            next(rest for word, rest in instructions(built[svc["image"]]) if word == "ENTRYPOINT")
        )
        assert entry[:3] == TINI, f"{name}: needs tini to reap Flower's children"
    assert services["mlflow"]["entrypoint"] == [*TINI, "mlflow", "server"]
    named = set(compose["volumes"])
    for name, svc in services.items():
        for entry in svc.get("volumes", []):
            src, _ = volume(entry)
            if entry.startswith(SECRETS_DIR) or entry.startswith(f"{EXPERIMENT}:"):
                continue
            assert not src.startswith((".", "/")), f"{name}: {entry} is not under VEILFED_SECRETS"
            assert src in named, f"volume {src} is not declared"
    for name in node_services(compose):
        # A node that cannot start exits with one line; a restart loop would bury it.
        assert services[name]["restart"] == "no", name


def test_compose_ports_and_commands(compose: dict[str, Any], prepared: set[str]) -> None:
    services = compose["services"]
    coord = services["coordinator"]
    found = check_flags(coord["command"], "coordinator", "start")
    assert found["--address"] == f"0.0.0.0:{PORT}" and "--serve" in found
    assert int(found.get("--control-port", CONTROL_PORT)) == CONTROL_PORT
    # Only the Fleet port is published; the Control API never leaves the container.
    assert coord["ports"] == [f"${{FLEET_PORT:-{PORT}}}:{PORT}"]
    for name, svc in services.items():
        assert name == "coordinator" or "ports" not in svc, f"{name} publishes {svc['ports']}"
        assert not any(str(CONTROL_PORT) in str(p) for p in svc.get("ports", [])), svc
    mlflow = flags(services["mlflow"]["command"])
    uri = urlparse(coord["environment"]["MLFLOW_TRACKING_URI"])
    assert uri.geturl() == f"http://mlflow:{mlflow['--port']}"
    assert uri.netloc in mlflow["--allowed-hosts"].split(","), "MLflow refuses the coordinator"
    mounts = mounts_of(coord)
    # The experiment Kubernetes runs, bind-mounted (relative to deploy/, not to the secrets).
    assert mounts[found["--config"]] == EXPERIMENT
    min_fit = tomllib.loads((DEPLOY / "k8s/experiment.toml").read_text())["federated"][
        "min_fit_clients"
    ]
    for name in ("ca.pem", "superlink.pem", "superlink.key", "app-signing.key"):
        assert mounts[f"{found['--certs']}/{name}"] == f"./certs/{name}"
    assert mounts[found["--auth-keys"]] == "./certs/auth-keys"
    assert mounts[found["--he-context"]] == f"./he/{PUBLIC_NAME}"
    assert SECRET_NAME not in json.dumps(coord), "the coordinator must never get the HE secret"
    # Nodes dial the coordinator by a name its certificate is valid for.
    _, hosts = readme_prepare()["deploy"]
    for i, name in enumerate(node_services(compose)):
        node = services[name]
        cid = f"client-{i:04d}"
        nf = check_flags(node["command"], "node", "start")
        assert nf["--superlink"] == f"coordinator:{PORT}" and "coordinator" in hosts
        check_node_budget(nf, f"compose {name}")
        check_he_floor(nf, NODES, min_fit, f"compose {name}")
        mounts = mounts_of(node)
        assert mounts[nf["--auth-key"]] == f"./certs/nodes/{cid}.key"
        assert mounts[f"{nf['--certs']}/ca.pem"] == "./certs/ca.pem"
        trusted = nf.get("--trusted-entities", f"{nf['--certs']}/trusted-entities.yaml")
        assert mounts[trusted] == "./certs/trusted-entities.yaml"
        assert "./certs/app-signing.key" not in mounts.values()  # nodes verify, never sign
        for src in mounts.values():  # no other client's auth key or shard key
            other = re.search(r"client-\d{4}", src)
            assert other is None or other.group() == cid, f"{name} mounts {src}"
        assert mounts[nf["--shard"]] == f"./data/{cid}.vfs"
        assert mounts[nf["--key-file"]] == f"./data/{cid}.key"
        assert mounts[nf["--he-context"]] == f"./he/{SECRET_NAME}"
    # Every ./ source is a file `deploy/prepare.sh deploy ...` writes.
    for svc in services.values():
        for src, _ in map(volume, svc.get("volumes", [])):
            if src.startswith("./") and src != EXPERIMENT:
                assert src.removeprefix("./") in prepared, src


def test_readme_node_container_matches_compose(compose: dict[str, Any]) -> None:
    """The README's `podman run` of a node on a machine of its own is Compose's node-0."""
    words = readme_command("podman run -d --name veilfed-node-0 ")
    image = words.index("veilfed-node:latest")
    run_flags, args = words[:image], words[image + 1 :]
    assert "--restart=no" in run_flags
    mounts = {run_flags[i + 1] for i, w in enumerate(run_flags) if w == "-v"}
    node = compose["services"]["node-0"]
    assert {v for v in mounts if v.startswith("./")} == {
        f"{src}:{dst}:ro" for dst, src in mounts_of(node).items() if src.startswith("./")
    }
    nf = check_flags(args, "node", "start")
    expected = flags(node["command"])
    del expected["--superlink"], expected["--connect-tries"]  # another host, the default tries
    assert {k: v for k, v in nf.items() if k != "--superlink"} == expected
