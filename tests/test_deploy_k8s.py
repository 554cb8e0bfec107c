"""deploy/k8s/: the manifests, the kustomization, and the plan deploy/k8s/podman_play.py plays.

The resources are the expected kinds; Services select pods, none a node's; pods run as the
images' non-root user and claim declared volumes. Every generated Secret and config map is used,
and every Secret file is one `deploy/prepare.sh deploy/k8s ...` writes (no data owner's key or
store). Images are the built ones; only the Fleet port is exposed; MLflow accepts the
coordinator. Keys are copied from their Secret mounts into in-memory directories, private ones
with mode 0600 (veilfed refuses a group-readable key, as a Secret mount is): the coordinator
gets public.ctx, its TLS and app-signing keys and the registered nodes' keys, never secret.ctx;
each node its own Secret and the HE secret, nothing of another client. The experiment is the one
Compose runs. podman_play.py plays the same Deployments, volumes, Secrets and config maps, with
Services as static addresses and host aliases.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import re
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

import pytest
from testkit.deploy_files import (  # noqa: F401 (fixtures, requested by name)
    CLIENTS,
    CONTROL_PORT,
    DEPLOY,
    IMAGE_UID,
    NODES,
    PORT,
    ROOT,
    built_images,
    cert_files_fixture,
    check_flags,
    check_he_floor,
    check_node_budget,
    copied_files,
    entry_script,
    flags,
    he_files_fixture,
    in_memory,
    k8s_fixture,
    kustomization_fixture,
    mounted_volume,
    pod_spec,
    prepared_fixture,
    readme_prepare,
    secret_behind,
    secret_keys,
    secret_source,
)

from veilfed.crypto import certs
from veilfed.crypto.he_keys import PUBLIC_NAME, SECRET_NAME, load_context


def test_k8s_kinds(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    nodes = {("Deployment", f"veilfed-{cid}") for cid in CLIENTS}
    assert set(k8s) == {
        ("Namespace", "veilfed"),
        ("PersistentVolumeClaim", "coordinator-state"),
        ("Deployment", "veilfed-coordinator"),
        ("Service", "veilfed-coordinator"),
        *nodes,
        *(("PersistentVolumeClaim", f"veilfed-{cid}-data") for cid in CLIENTS),
        ("PersistentVolumeClaim", "mlflow"),
        ("Deployment", "mlflow"),
        ("Service", "mlflow"),
    }
    deployments = {name: d for (k, name), d in k8s.items() if k == "Deployment"}
    for name, doc in deployments.items():
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        spec = doc["spec"]["template"]["spec"]
        assert "initContainers" not in spec, f"{name}: its container copies its own keys"
        assert spec["securityContext"]["runAsUser"] == IMAGE_UID, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for vol in spec.get("volumes", []):
            if "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in k8s, f"{name}: no PVC {claim}"
    for (kind, name), doc in k8s.items():
        if kind == "Service":
            targets = [
                dep
                for dep, d in deployments.items()
                if doc["spec"]["selector"].items()
                <= d["spec"]["template"]["metadata"]["labels"].items()
            ]
            assert targets, f"Service {name} selects no pods"
            # Nothing connects to a node, so no Service reaches one.
            assert not {("Deployment", t) for t in targets} & nodes, f"Service {name}: {targets}"


def test_k8s_secrets_configmaps_and_files(
    kustomization: dict[str, Any], k8s: dict[tuple[str, str], dict[str, Any]], prepared: set[str]
) -> None:
    secrets = {g["name"]: g["files"] for g in kustomization["secretGenerator"]}
    configmaps = {g["name"]: g["files"] for g in kustomization["configMapGenerator"]}
    referenced: set[str] = set()
    for (kind, name), doc in k8s.items():
        if kind != "Deployment":
            continue
        for vol in doc["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in vol:
                assert vol["secret"]["secretName"] in secrets, vol
                # podman kube play (4.3) crashes on a Secret volume without it.
                assert vol["secret"].get("optional") is False, f"{name}: {vol['name']}"
                referenced.add(vol["secret"]["secretName"])
            if "configMap" in vol:
                assert vol["configMap"]["name"] in configmaps, vol
                referenced.add(vol["configMap"]["name"])
    assert referenced == set(secrets) | set(configmaps), "generated but unused"
    # Every file is one `deploy/prepare.sh deploy/k8s ...` writes (kustomize reads them from
    # deploy/k8s/); no data owner's key or store, only the nodes' shard keys.
    assert "deploy/k8s" in readme_prepare()
    for files in secrets.values():
        for f in map(secret_source, files):
            assert f in prepared, f
            assert not f.startswith("data/") or f.endswith(".key"), f
    assert secrets["veilfed-he-public"] == [f"he/{PUBLIC_NAME}"]
    assert secrets["veilfed-he-secret"] == [f"he/{SECRET_NAME}"]
    # Only the node pods may reference the HE secret context.
    for (kind, name), doc in k8s.items():
        if (kind, name) not in {("Deployment", f"veilfed-{cid}") for cid in CLIENTS}:
            assert "veilfed-he-secret" not in json.dumps(doc), f"{kind} {name} gets the HE secret"
    for files in configmaps.values():
        for f in files:
            tomllib.loads((DEPLOY / "k8s" / f).read_text())


def test_k8s_images_ports_and_commands(
    kustomization: dict[str, Any], k8s: dict[tuple[str, str], dict[str, Any]]
) -> None:
    built = {tag.split(":")[0] for tag in built_images()}
    assert {i["name"] for i in kustomization["images"]} == built
    for i in kustomization["images"]:
        assert f"{i['name']}:{i['newTag']}" in built_images(), i
    for (kind, _), doc in k8s.items():
        if kind == "Deployment":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                assert c["image"] in built, c["image"]
    coord_spec = pod_spec(k8s, "Deployment", "veilfed-coordinator")
    (coord,) = coord_spec["containers"]
    found = check_flags(coord["args"], "coordinator", "start")
    assert found["--address"] == f"0.0.0.0:{PORT}"
    assert int(found.get("--control-port", CONTROL_PORT)) == CONTROL_PORT
    # The container and the Service expose the Fleet port only.
    assert coord["ports"] == [{"name": "fleet", "containerPort": PORT}]
    assert k8s[("Service", "veilfed-coordinator")]["spec"]["ports"] == [
        {"name": "fleet", "port": PORT, "targetPort": "fleet"}
    ]
    for (kind, _), doc in k8s.items():
        if kind == "Service":
            assert CONTROL_PORT not in [p["port"] for p in doc["spec"].get("ports", [])]
    (mlflow,) = pod_spec(k8s, "Deployment", "mlflow")["containers"]
    mlflow_flags = flags(mlflow["args"])
    mlflow_port = int(mlflow_flags["--port"])
    assert k8s[("Service", "mlflow")]["spec"]["ports"][0]["port"] == mlflow_port
    env = {e["name"]: e["value"] for e in coord["env"]}
    uri = urlparse(env["MLFLOW_TRACKING_URI"])
    assert uri.geturl() == f"http://mlflow:{mlflow_port}"
    assert uri.netloc in mlflow_flags["--allowed-hosts"].split(","), (
        "MLflow refuses the coordinator"
    )
    mounts = {m["mountPath"] for m in coord["volumeMounts"]}
    assert found["--certs"] in mounts and found["--state"] in mounts
    assert str(Path(found["--config"]).parent) in mounts
    secrets = {g["name"]: g["files"] for g in kustomization["secretGenerator"]}
    he_public, _ = secret_behind(coord_spec, coord, found["--he-context"], secrets)
    assert he_public == "veilfed-he-public"
    assert SECRET_NAME not in json.dumps(coord_spec)
    # The TLS material and the app-signing key reach the coordinator's in-memory --certs, the
    # private keys as private copies; --auth-keys holds exactly the registered nodes' keys.
    copies = copied_files(entry_script(coord, "coordinator"))
    in_memory(coord_spec, coord, found["--certs"])
    for name in ("ca.pem", "superlink.pem", "superlink.key", "app-signing.key"):
        src, mode = copies[f"{found['--certs']}/{name}"]
        assert secret_behind(coord_spec, coord, src, secrets) == (
            "veilfed-coordinator-tls",
            f"certs/{name}",
        )
        assert mode == ("600" if name.endswith(".key") else None), name
    auth = [
        src for dst, (src, _) in copies.items() if Path(dst).parent == Path(found["--auth-keys"])
    ]
    assert sorted(secret_behind(coord_spec, coord, src, secrets) for src in auth) == [
        ("veilfed-auth-keys", f) for f in sorted(secrets["veilfed-auth-keys"])
    ]

    experiment = tomllib.loads((DEPLOY / "k8s" / "experiment.toml").read_text())
    assert len(CLIENTS) == len(secrets["veilfed-auth-keys"]) == experiment["federated"]["clients"]
    # It is experiments/nodes.toml's experiment (what Compose runs), but for its name.
    nodes_toml = tomllib.loads((ROOT / "experiments" / "nodes.toml").read_text())
    for table in ("world", "model", "train", "privacy"):
        assert experiment[table] == nodes_toml[table], table
    _, hosts = readme_prepare()["deploy/k8s"]
    for cid in CLIENTS:
        nodes = k8s[("Deployment", f"veilfed-{cid}")]["spec"]
        assert nodes["replicas"] == 1
        nf = check_node_pod(cid, nodes["template"]["spec"], secrets)
        assert nf["--superlink"].partition(":")[0] in hosts  # in the coordinator's certificate
        check_he_floor(nf, len(CLIENTS), experiment["federated"]["min_fit_clients"], f"k8s {cid}")


def check_node_pod(cid: str, spec: dict[str, Any], secrets: dict[str, list[str]]) -> dict[str, str]:
    """One node pod: flags, keys copied private from its own Secret, nothing of other clients."""
    (node,) = spec["containers"]
    nf = check_flags(node["args"], "node", "start")  # the image's `veilfed node start`
    assert nf["--superlink"] == f"veilfed-coordinator:{PORT}"
    check_node_budget(nf, f"k8s {cid}")
    # Its shard and state live on its own volume; it starts once the shard is copied there.
    assert nf["--shard"] == f"/data/{cid}.vfs"
    for path in (nf["--shard"], nf["--state"]):
        claim = mounted_volume(spec, node, path)["persistentVolumeClaim"]["claimName"]
        assert claim == f"veilfed-{cid}-data", path
    script = entry_script(node, "node")
    assert f"until [ -s {nf['--shard']} ]" in script
    copies = copied_files(script)
    in_memory(spec, node, nf["--certs"])

    def source(path: str, private: bool) -> tuple[str, str]:
        """(Secret, file) the container copied to ``path`` (in the in-memory --certs)."""
        assert Path(path).parent == Path(nf["--certs"]), path
        assert path in copies, f"{cid}: {path} is not copied from a Secret"
        src, mode = copies[path]
        if private:  # veilfed refuses private keys others can read
            assert mode == "600", f"{cid}: {path} copied with mode {mode}"
        return secret_behind(spec, node, src, secrets)

    assert source(nf["--he-context"], True) == ("veilfed-he-secret", f"he/{SECRET_NAME}")
    own = f"veilfed-node-{cid}"
    assert source(nf["--auth-key"], True) == (own, f"certs/nodes/{cid}.key")
    assert source(nf["--key-file"], True) == (own, f"data/{cid}.key")
    assert source(f"{nf['--certs']}/ca.pem", False) == (own, "certs/ca.pem")
    trusted = nf.get("--trusted-entities", f"{nf['--certs']}/trusted-entities.yaml")
    assert source(trusted, False) == (own, "certs/trusted-entities.yaml")
    # The pod mounts its own Secret and the shared HE secret, and nothing of another client.
    mounted = {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    assert mounted == {own, "veilfed-he-secret"}, mounted
    for f in map(secret_source, secrets[own]):
        other = re.search(r"client-\d{4}", f)
        assert other is None or other.group() == cid, f"{own} holds {f}"
    return nf


def test_he_secret_context_must_be_private(he_files: Path, tmp_path: Path) -> None:
    """A group-readable secret.ctx (as a Kubernetes Secret mount is) is refused, which is why the
    node containers copy it with `install -m 600` first."""
    from veilfed.errors import UsageError

    ctx = tmp_path / SECRET_NAME
    ctx.write_bytes((he_files / SECRET_NAME).read_bytes())
    ctx.chmod(0o440)
    with pytest.raises(UsageError, match="readable by others; chmod 600"):
        load_context(ctx, require_secret=True)
    ctx.chmod(0o600)
    assert load_context(ctx, require_secret=True).is_private


# -- podman kube play ----------------------------------------------------------------------------


def podman_play() -> ModuleType:
    spec = importlib.util.spec_from_file_location("podman_play", DEPLOY / "k8s" / "podman_play.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_podman_play_plan(
    tmp_path: Path, he_files: Path, kustomization: dict[str, Any], k8s: dict[tuple[str, str], Any]
) -> None:
    """What podman_play.py plays in place of kustomize and the cluster: every Deployment, with
    the images' tags, Services as static addresses and host aliases, the generated Secrets."""
    certs.create_bundle(tmp_path / "certs", NODES)
    (tmp_path / "he").mkdir()
    for p in he_files.iterdir():
        (tmp_path / "he" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "data").mkdir()
    for cid in CLIENTS:
        (tmp_path / "data" / f"{cid}.key").write_bytes(bytes(44))
    subnet = "10.89.77.0/24"
    plan = podman_play().Plan(DEPLOY / "k8s", tmp_path, subnet)

    deployments = {name for kind, name in k8s if kind == "Deployment"}
    assert {d["metadata"]["name"] for d in plan.deployments} == deployments
    assert {v["metadata"]["name"] for v in plan.volumes} == {
        name for kind, name in k8s if kind == "PersistentVolumeClaim"
    }
    assert sorted(plan.skipped) == sorted(
        f"{kind} {name}" for kind, name in k8s if kind in ("Namespace", "Service")
    )
    # Each Service's Deployment has its own address, and every pod resolves each Service's name.
    assert set(plan.addresses) == {"veilfed-coordinator", "mlflow"}
    assert len(set(plan.addresses.values())) == 2
    assert all(
        ipaddress.ip_address(a) in ipaddress.ip_network(subnet) for a in plan.addresses.values()
    )
    aliases = {(name, plan.addresses[name]) for name in ("veilfed-coordinator", "mlflow")}
    for dep in plan.deployments:
        spec = dep["spec"]["template"]["spec"]
        found = {(h, a["ip"]) for a in spec["hostAliases"] for h in a["hostnames"]}
        assert found == aliases, dep["metadata"]["name"]
        for c in spec["containers"]:
            assert c["image"] in built_images(), c["image"]  # the `:latest` kustomize applies
    for g in kustomization["secretGenerator"]:
        assert plan.secrets[g["name"]] == {
            key: (tmp_path / f).read_bytes() for key, f in secret_keys(g["files"]).items()
        }, g["name"]
    assert [(m["metadata"]["name"], set(m["data"])) for m in plan.configmaps] == [
        (g["name"], set(g["files"])) for g in kustomization["configMapGenerator"]
    ]
