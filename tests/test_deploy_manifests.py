"""deploy/: Dockerfiles, Compose, Kubernetes and Ray files parse and agree with each other.

Docker has no engine here, so nothing is built or started; instead every cross-reference is
checked: files the Dockerfiles COPY exist, images used are images built, ports line up end to
end, secrets and config maps referenced are generated, generated secrets come from files that
`veilfed certs new` or `veilfed he keygen` writes, and every CLI flag in a command line is a real
option. CKKS secure aggregation is wired everywhere: the coordinator gets public.ctx, the nodes
secret.ctx, and the coordinator never secret.ctx. Only the Fleet port is published or exposed
(the Control API stays inside the coordinator), the coordinator gets its app-signing key and
every node the trusted entities, and a node gets no other client's keys.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from veilfed.cli.main import app
from veilfed.crypto import certs
from veilfed.crypto.he_keys import PUBLIC_NAME, SECRET_NAME, load_context

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
README = (DEPLOY / "README.md").read_text()
PORT = 9092  # the Fleet API
CONTROL_PORT = 9093  # `coordinator start --control-port` default: loopback only, never published


def options(*path: str) -> set[str]:
    """Long options of a veilfed (sub)command, from the Typer app itself."""
    cmd: Any = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return {opt for param in cmd.params for opt in param.opts if opt.startswith("--")}


def flags(args: list[str]) -> dict[str, str]:
    """``--flag=value`` / ``--flag value`` / ``--flag`` items of an argument list."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
                value = args[i + 1]
                i += 1
            out[name] = value
        i += 1
    return out


def check_flags(args: list[str], *command: str) -> dict[str, str]:
    found = flags(args)
    unknown = set(found) - options(*command)
    assert not unknown, f"`veilfed {' '.join(command)}` has no {sorted(unknown)}"
    return found


def check_node_budget(nf: dict[str, str], where: str) -> None:
    """A node that may train with DP sets its own ε cap; the coordinator never does."""
    from veilfed.clients.policy import NodePolicy

    assert "--budget" in nf, f"{where}: `veilfed node start` without --budget exits at start"
    NodePolicy(budget=float(nf["--budget"])).check_start()


def readme_command(prefix: str) -> list[str]:
    """Arguments of the one README command line (continuations joined) starting with ``prefix``."""
    lines = README.replace("\\\n", " ").splitlines()
    found = [line.strip().removeprefix(prefix) for line in lines if line.startswith(prefix)]
    assert len(found) == 1, f"README: {len(found)} `{prefix}` lines"
    return shlex.split(found[0])


@pytest.fixture(scope="module")
def he_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory `veilfed he keygen` (CLI defaults, as the README runs it) writes."""
    out = tmp_path_factory.mktemp("he")
    result = CliRunner().invoke(app, ["he", "keygen", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {SECRET_NAME, PUBLIC_NAME}
    return out


def test_readme_processes_use_he() -> None:
    keygen = re.findall(r"^veilfed he keygen --out (\S+)$", README, re.M)
    assert keygen == ["deploy/he", "deploy/k8s/he"]  # all setups, then Kubernetes' Secrets
    coord = check_flags(readme_command("veilfed coordinator start "), "coordinator", "start")
    assert coord["--he-context"] == f"deploy/he/{PUBLIC_NAME}"
    node = check_flags(readme_command("veilfed node start "), "node", "start")
    assert node["--he-context"] == f"deploy/he/{SECRET_NAME}"
    check_node_budget(node, "deploy/README.md")
    chown = readme_command("sudo chown -R 10001:10001 ")
    assert {"deploy/certs", "deploy/data", "deploy/he"} <= set(chown)


# -- Dockerfiles ---------------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("role", ["coordinator", "node"])
def test_dockerfile(role: str) -> None:
    path = DEPLOY / "docker" / f"{role}.Dockerfile"
    ins = instructions(path)
    assert ins[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(rest for word, rest in ins if word == "RUN")
    assert "torch==2.14.1" in runs and "download.pytorch.org/whl/cpu" in runs
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "torch==2.14.1" in pyproject["project"]["dependencies"]
    for word, rest in ins:
        if word == "COPY":
            *sources, _dest = [s for s in rest.split() if not s.startswith("--")]
            for src in sources:
                assert list(ROOT.glob(src)), f"{path.name}: COPY {src} matches nothing"
    entry = json.loads(next(rest for word, rest in ins if word == "ENTRYPOINT"))
    assert entry == ["tini", "--", "veilfed", role, "start"]
    assert any(word == "USER" for word, _ in ins)
    ignore = (path.parent / f"{path.name}.dockerignore").read_text().split()
    assert {".venv", ".git", "deploy/certs", "deploy/data", "deploy/he", "deploy/k8s/he"} <= set(
        ignore
    )
    if role == "coordinator":
        assert ("EXPOSE", str(PORT)) in ins
        cmd = json.loads(next(rest for word, rest in ins if word == "CMD"))
        found = check_flags(cmd, "coordinator", "start")
        assert found["--address"].endswith(f":{PORT}")
        assert (ROOT / found["--config"].replace("/opt/veilfed/", "")).is_file()


CLIENTS = [f"client-{i:04d}" for i in range(3)]


def built_images() -> dict[str, str]:
    """Image tag -> Dockerfile, from the README's `docker build` lines."""
    return {
        tag: dockerfile
        for dockerfile, tag in re.findall(r"docker build -f (\S+) -t (\S+) \.", README)
    }


def test_readme_builds_both_images() -> None:
    images = built_images()
    assert images == {
        "veilfed-coordinator:latest": "deploy/docker/coordinator.Dockerfile",
        "veilfed-node:latest": "deploy/docker/node.Dockerfile",
    }
    for dockerfile in images.values():
        assert (ROOT / dockerfile).is_file()


# -- Compose -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Relative paths `veilfed certs new --nodes 3` writes."""
    out = certs.create_bundle(tmp_path_factory.mktemp("c"), 3).out
    return {str(p.relative_to(out)) for p in out.rglob("*")}


def test_compose_services_images_and_builds(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"mlflow", "coordinator", "node-0", "node-1", "node-2"}
    images = built_images()
    for name, svc in services.items():
        assert svc["image"] in images, f"{name}: image {svc['image']} is not built"
        build = svc["build"]
        dockerfile = (DEPLOY / build["context"] / build["dockerfile"]).resolve()
        assert dockerfile == (ROOT / images[svc["image"]]).resolve(), name
        assert svc.get("init") is True, f"{name}: needs an init to reap Flower's children"
    named = set(compose["volumes"])
    for svc in services.values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if not src.startswith("."):
                assert src in named, f"volume {src} is not declared"


def test_compose_ports_and_commands(
    compose: dict[str, Any], cert_files: set[str], he_files: Path
) -> None:
    services = compose["services"]
    coord = services["coordinator"]
    found = check_flags(coord["command"], "coordinator", "start")
    assert found["--address"] == f"0.0.0.0:{PORT}" and "--serve" in found
    assert int(found.get("--control-port", CONTROL_PORT)) == CONTROL_PORT
    # Only the Fleet port is published; the Control API never leaves the container.
    assert coord["ports"] == [f"{PORT}:{PORT}"]
    for svc in services.values():
        assert not any(str(CONTROL_PORT) in str(p) for p in svc.get("ports", [])), svc
    mlflow_port = flags(services["mlflow"]["command"])["--port"]
    assert coord["environment"]["MLFLOW_TRACKING_URI"] == f"http://mlflow:{mlflow_port}"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in coord["volumes"]}
    for name in ("ca.pem", "superlink.pem", "superlink.key", "app-signing.key"):
        assert mounts[f"{found['--certs']}/{name}"] == f"./certs/{name}"
    assert mounts[found["--auth-keys"]] == "./certs/auth-keys"
    assert mounts[found["--he-context"]] == f"./he/{PUBLIC_NAME}"
    assert SECRET_NAME not in json.dumps(coord), "the coordinator must never get the HE secret"
    for i in range(3):
        node = services[f"node-{i}"]
        cid = f"client-{i:04d}"
        nf = check_flags(node["command"], "node", "start")
        assert nf["--superlink"] == f"coordinator:{PORT}"
        check_node_budget(nf, f"compose node-{i}")
        mounts = {v.split(":")[1]: v.split(":")[0] for v in node["volumes"]}
        assert mounts[nf["--auth-key"]] == f"./certs/nodes/{cid}.key"
        assert mounts[f"{nf['--certs']}/ca.pem"] == "./certs/ca.pem"
        trusted = nf.get("--trusted-entities", f"{nf['--certs']}/trusted-entities.yaml")
        assert mounts[trusted] == "./certs/trusted-entities.yaml"
        assert "./certs/app-signing.key" not in mounts.values()  # nodes verify, never sign
        for src in mounts.values():  # no other client's auth key or shard key
            other = re.search(r"client-\d{4}", src)
            assert other is None or other.group() == cid, f"node-{i} mounts {src}"
        assert mounts[nf["--shard"]] == f"./data/{cid}.vfs"
        assert mounts[nf["--key-file"]] == f"./data/{cid}.key"
        assert mounts[nf["--he-context"]] == f"./he/{SECRET_NAME}"
    # Every ./certs source is a file `veilfed certs new` writes, ./he ones `veilfed he keygen`;
    # ./data ones the README exports.
    for svc in services.values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./certs/"):
                assert src.removeprefix("./certs/") in cert_files, src
            elif src.startswith("./he/"):
                assert (he_files / src.removeprefix("./he/")).is_file(), src
            elif src.startswith("./data/"):
                assert re.fullmatch(r"\./data/client-000[0-2]\.(vfs|key)", src), src
    assert "--out deploy/data/$c.vfs" in README and "--out deploy/data/$c.key" in README
    assert "certs new --out deploy/certs --nodes 3 --host coordinator" in README


# -- Kubernetes ----------------------------------------------------------------------------------


def secret_source(entry: str) -> str:
    """The file of a secretGenerator entry (``path`` or ``key=path``)."""
    return entry.split("=", 1)[-1]


def secret_keys(entries: list[str]) -> dict[str, str]:
    """Key -> file of a generated Secret (kustomize: the key is the basename unless named)."""
    out = {}
    for entry in entries:
        key, eq, path = entry.partition("=")
        out[key if eq else Path(entry).name] = secret_source(entry)
    return out


def secret_behind(
    spec: dict[str, Any], container: dict[str, Any], path: str, secrets: dict[str, list[str]]
) -> tuple[str, str]:
    """(Secret, its file) behind ``path`` in ``container`` (a mounted secret volume)."""
    mount = next(
        (m for m in container["volumeMounts"] if Path(path).parent == Path(m["mountPath"])), None
    )
    assert mount is not None, f"{path}: not in a volume of {container['name']}"
    vol = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert "secret" in vol, f"{path}: volume {vol['name']} is not a Secret"
    name = vol["secret"]["secretName"]
    keys = secret_keys(secrets[name])
    items = {i["path"]: i["key"] for i in vol["secret"].get("items", [])} or {k: k for k in keys}
    key = items.get(Path(path).name)
    assert key in keys, f"{path}: not in {name}"
    return name, keys[key]


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def k8s(kustomization: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    docs = {}
    for res in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / "k8s" / res).read_text()):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def copied_files(script: str) -> dict[str, str]:
    """Destination file -> source of every ``cp``/``install`` in an init container's script."""
    out = {}
    for command in script.split("&&"):
        words = shlex.split(command)
        if not words or words[0] not in ("cp", "install"):
            continue
        paths = [w for w in words[1:] if not w.startswith("-") and not w.isdigit()]
        *sources, dest = paths
        for src in sources:
            out[dest + Path(src).name if dest.endswith("/") else dest] = src
    return out


def pod_spec(docs: dict[tuple[str, str], dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return docs[(kind, name)]["spec"]["template"]["spec"]


def test_k8s_kinds(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    assert {
        ("Namespace", "veilfed"),
        ("Deployment", "veilfed-coordinator"),
        ("Service", "veilfed-coordinator"),
        *(("StatefulSet", f"veilfed-{cid}") for cid in CLIENTS),
        ("Deployment", "mlflow"),
        ("Service", "mlflow"),
    } <= set(k8s)
    for (kind, name), doc in k8s.items():
        if kind in ("Deployment", "StatefulSet"):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        if kind == "Service":
            targets = [
                labels
                for (k, _), d in k8s.items()
                if k in ("Deployment", "StatefulSet")
                for labels in [d["spec"]["template"]["metadata"]["labels"]]
                if doc["spec"]["selector"].items() <= labels.items()
            ]
            assert targets, f"Service {name} selects no pods"


def test_k8s_secrets_configmaps_and_files(
    kustomization: dict[str, Any], k8s: dict[tuple[str, str], dict[str, Any]], cert_files, he_files
) -> None:
    secrets = {g["name"]: g["files"] for g in kustomization["secretGenerator"]}
    configmaps = {g["name"]: g["files"] for g in kustomization["configMapGenerator"]}
    referenced: set[str] = set()
    for (kind, _), doc in k8s.items():
        if kind not in ("Deployment", "StatefulSet"):
            continue
        for vol in doc["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in vol:
                assert vol["secret"]["secretName"] in secrets, vol
                referenced.add(vol["secret"]["secretName"])
            if "configMap" in vol:
                assert vol["configMap"]["name"] in configmaps, vol
                referenced.add(vol["configMap"]["name"])
    assert referenced == set(secrets) | set(configmaps), "generated but unused"
    for files in secrets.values():
        for f in map(secret_source, files):
            if f.startswith("certs/"):
                assert f.removeprefix("certs/") in cert_files, f
            elif f.startswith("he/"):
                assert (he_files / f.removeprefix("he/")).is_file(), f
            else:
                assert re.fullmatch(r"data-keys/client-000[0-2]\.key", f), f
    assert "--out deploy/k8s/data-keys/client-000$i.key" in README
    assert "certs new --out deploy/k8s/certs --nodes 3" in README
    assert secrets["veilfed-he-public"] == [f"he/{PUBLIC_NAME}"]
    assert secrets["veilfed-he-secret"] == [f"he/{SECRET_NAME}"]
    assert "he keygen --out deploy/k8s/he" in README
    # Only the node pods may reference the HE secret context.
    for (kind, name), doc in k8s.items():
        if (kind, name) not in {("StatefulSet", f"veilfed-{cid}") for cid in CLIENTS}:
            assert "veilfed-he-secret" not in json.dumps(doc), f"{kind} {name} gets the HE secret"
    for files in configmaps.values():
        for f in files:
            tomllib.loads((DEPLOY / "k8s" / f).read_text())


def test_k8s_images_ports_and_commands(
    kustomization: dict[str, Any], k8s: dict[tuple[str, str], dict[str, Any]]
) -> None:
    built = {tag.split(":")[0] for tag in built_images()}
    assert {i["name"] for i in kustomization["images"]} == built
    for (kind, _), doc in k8s.items():
        if kind in ("Deployment", "StatefulSet"):
            spec = doc["spec"]["template"]["spec"]
            for c in [*spec.get("initContainers", []), *spec["containers"]]:
                assert c["image"] in built, c["image"]
    coord = pod_spec(k8s, "Deployment", "veilfed-coordinator")["containers"][0]
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
    mlflow = pod_spec(k8s, "Deployment", "mlflow")["containers"][0]
    mlflow_port = int(flags(mlflow["args"])["--port"])
    assert k8s[("Service", "mlflow")]["spec"]["ports"][0]["port"] == mlflow_port
    env = {e["name"]: e["value"] for e in coord["env"]}
    assert env["MLFLOW_TRACKING_URI"] == f"http://mlflow:{mlflow_port}"
    mounts = {m["mountPath"] for m in coord["volumeMounts"]}
    assert found["--certs"] in mounts and found["--state"] in mounts
    assert str(Path(found["--config"]).parent) in mounts
    coord_spec = pod_spec(k8s, "Deployment", "veilfed-coordinator")
    secrets = {g["name"]: g["files"] for g in kustomization["secretGenerator"]}
    he_public, _ = secret_behind(coord_spec, coord, found["--he-context"], secrets)
    assert he_public == "veilfed-he-public"
    assert SECRET_NAME not in json.dumps(coord_spec)
    # The app-signing key reaches the coordinator as a private copy in its --certs.
    coord_init = coord_spec["initContainers"][0]
    signing = f"{found['--certs']}/app-signing.key"
    assert f"install -m 600 /secrets/tls/app-signing.key {signing}" in coord_init["args"][0]
    src = copied_files(coord_init["args"][0])[signing]
    assert secret_behind(coord_spec, coord_init, src, secrets)[1] == "certs/app-signing.key"

    experiment = tomllib.loads((DEPLOY / "k8s" / "experiment.toml").read_text())
    assert len(CLIENTS) == len(secrets["veilfed-auth-keys"]) == experiment["federated"]["clients"]
    for cid in CLIENTS:
        nodes = k8s[("StatefulSet", f"veilfed-{cid}")]["spec"]
        assert nodes["replicas"] == 1
        check_node_pod(cid, nodes["template"]["spec"], secrets)


def check_node_pod(cid: str, spec: dict[str, Any], secrets: dict[str, list[str]]) -> None:
    """One node pod: flags, keys copied private from its own Secret, nothing of other clients."""
    node, init = spec["containers"][0], spec["initContainers"][0]
    nf = check_flags(node["args"], "node", "start")  # the image's `veilfed node start`
    assert nf["--superlink"] == f"veilfed-coordinator:{PORT}"
    check_node_budget(nf, f"k8s {cid}")
    assert nf["--shard"] == f"/data/{cid}.vfs"
    script = init["args"][0]
    assert "install -m 600" in script  # keys made private before veilfed checks their mode
    copies = copied_files(script)

    def source(path: str) -> tuple[str, str]:
        """(Secret, file) the init container copied to ``path`` (in the in-memory /keys)."""
        assert Path(path).parent == Path(nf["--certs"]), path
        assert path in copies, f"{cid}: {path} is not copied from a Secret"
        return secret_behind(spec, init, copies[path], secrets)

    assert source(nf["--he-context"]) == ("veilfed-he-secret", f"he/{SECRET_NAME}")
    own = f"veilfed-node-{cid}"
    assert source(nf["--auth-key"]) == (own, f"certs/nodes/{cid}.key")
    assert source(nf["--key-file"]) == (own, f"data-keys/{cid}.key")
    assert source(f"{nf['--certs']}/ca.pem") == (own, "certs/ca.pem")
    trusted = nf.get("--trusted-entities", f"{nf['--certs']}/trusted-entities.yaml")
    assert source(trusted) == (own, "certs/trusted-entities.yaml")
    # The pod mounts its own Secret and the shared HE secret, and nothing of another client.
    mounted = {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    assert mounted == {own, "veilfed-he-secret"}, mounted
    for f in map(secret_source, secrets[own]):
        other = re.search(r"client-\d{4}", f)
        assert other is None or other.group() == cid, f"{own} holds {f}"


def test_he_secret_context_must_be_private(he_files: Path, tmp_path: Path) -> None:
    """A group-readable secret.ctx (as a Kubernetes Secret mount is) is refused, which is why the
    node pods copy it with `install -m 600` first."""
    from veilfed.errors import UsageError

    ctx = tmp_path / SECRET_NAME
    ctx.write_bytes((he_files / SECRET_NAME).read_bytes())
    ctx.chmod(0o440)
    with pytest.raises(UsageError, match="readable by others; chmod 600"):
        load_context(ctx, require_secret=True)
    ctx.chmod(0o600)
    assert load_context(ctx, require_secret=True).is_private


# -- Ray -----------------------------------------------------------------------------------------


def test_ray_cluster_config() -> None:
    cfg = yaml.safe_load((DEPLOY / "ray" / "cluster.yaml").read_text())
    for key in ("cluster_name", "provider", "auth", "setup_commands", "head_start_ray_commands"):
        assert key in cfg
    head = " ".join(cfg["head_start_ray_commands"])
    workers = " ".join(cfg["worker_start_ray_commands"])
    port = re.search(r"--head --port=(\d+)", head).group(1)  # type: ignore[union-attr]
    assert f"--address=$RAY_HEAD_IP:{port}" in workers
    for remote, local in cfg["file_mounts"].items():
        # the operator's own files (the Ray token) are not in the repository
        if not local.startswith("~/"):
            assert (ROOT / local).exists(), f"file_mounts {remote}: {local} missing"
    setup = " ".join(cfg["setup_commands"])
    assert "download.pytorch.org/whl/cpu" in setup and "pip install -e ~/veilfed" in setup
    sim = re.search(r"~/venv/bin/veilfed simulate\s*\\?\n?\s*(.*?)'", README, re.S).group(1)  # type: ignore[union-attr]
    found = check_flags(shlex.split(sim.replace("\\\n", " ")), "simulate")
    assert found["--ray-address"].endswith(f":{port}")
    assert (ROOT / found["--config"]).is_file()
