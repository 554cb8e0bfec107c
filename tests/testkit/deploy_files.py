"""deploy/ as the static deploy tests read it: the files, the CLI options, the prepared secrets.

What tests/test_deploy_*.py share: the repository's deploy/ files and the ports, node count and
client ids they agree on; the veilfed CLI's real options (``check_flags``) and the node flags
every deployment must set; the README's command lines; the files `deploy/prepare.sh` writes;
Dockerfile parsing; Compose's short-syntax volumes; and the Kubernetes resources with the Secret
volumes, key copies and entry scripts of their pods.

The fixtures are module-scoped and named apart from their functions, so a test module imports
the functions it needs (``*_fixture``; pytest registers them under their fixture names) and
requests the fixtures by name: ``prepared`` (the files prepare.sh writes, through the same
`veilfed` commands) needs ``he_files`` and ``cert_files`` imported too; ``k8s`` (the resources)
needs ``kustomization``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from veilfed.cli.main import app
from veilfed.crypto import certs
from veilfed.crypto.he_keys import PUBLIC_NAME, SECRET_NAME

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
README = (DEPLOY / "README.md").read_text()
PREPARE = (DEPLOY / "prepare.sh").read_text()
PORT = 9092  # the Fleet API
CONTROL_PORT = 9093  # `coordinator start --control-port` default: loopback only, never published
NODES = 2  # client nodes in Compose and Kubernetes, and what the README prepares for them
CLIENTS = [f"client-{i:04d}" for i in range(NODES)]
TINI = ["tini", "-g", "--"]  # reaps Flower's children, forwards SIGTERM to the whole group


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


def check_he_floor(nf: dict[str, str], nodes: int, min_fit: int, where: str) -> None:
    """A node decrypts only aggregates of at least --he-min-contributors clients (default 3): at
    least 2, so no single client's update is decrypted alone, and no more than the federation
    aggregates, or no round ever completes."""
    floor = int(nf["--he-min-contributors"])
    assert 2 <= floor <= min(nodes, min_fit), f"{where}: --he-min-contributors {floor}"


def readme_command(prefix: str) -> list[str]:
    """Arguments of the one README command line (continuations joined) starting with ``prefix``."""
    lines = README.replace("\\\n", " ").splitlines()
    found = [line.strip().removeprefix(prefix) for line in lines if line.startswith(prefix)]
    assert len(found) == 1, f"README: {len(found)} `{prefix}` lines"
    return shlex.split(found[0])


def readme_prepare() -> dict[str, tuple[int, list[str]]]:
    """DIR -> (NODES, HOSTs) of the README's `deploy/prepare.sh DIR NODES HOST...` lines."""
    out: dict[str, tuple[int, list[str]]] = {}
    for line in re.findall(r"^deploy/prepare\.sh (.+)$", README, re.M):
        target, nodes, *hosts = shlex.split(line)
        assert out.setdefault(target, (int(nodes), hosts)) == (int(nodes), hosts), line
    return out


def prepare_commands() -> dict[tuple[str, ...], dict[str, str]]:
    """Flags of each `veilfed` command deploy/prepare.sh runs, by subcommand (real options)."""
    out = {}
    for line in PREPARE.replace("\\\n", " ").splitlines():
        if line.strip().startswith('"${veilfed[@]}"'):
            words = shlex.split(line)[1:]
            n = next(i for i, w in enumerate(words) if w.startswith("--"))
            out[tuple(words[:n])] = check_flags(words[n:], *words[:n])
    return out


@pytest.fixture(scope="module", name="he_files")
def he_files_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory `veilfed he keygen` (CLI defaults, as deploy/prepare.sh runs it) writes."""
    out = tmp_path_factory.mktemp("he")
    result = CliRunner().invoke(app, ["he", "keygen", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {SECRET_NAME, PUBLIC_NAME}
    return out


@pytest.fixture(scope="module", name="cert_files")
def cert_files_fixture(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Relative paths `veilfed certs new --nodes 2` writes."""
    out = certs.create_bundle(tmp_path_factory.mktemp("c"), NODES).out
    return {str(p.relative_to(out)) for p in out.rglob("*")}


@pytest.fixture(scope="module", name="prepared")
def prepared_fixture(cert_files: set[str], he_files: Path) -> set[str]:
    """Paths, relative to its DIR, that `deploy/prepare.sh DIR 2 ...` writes for the nodes and
    the coordinator (the data owner's own key and store stay out of every deployment)."""
    cmds = prepare_commands()
    new = cmds[("certs", "new")]
    assert new["--out"] == "$dir/certs" and new["--nodes"] == "$nodes"
    assert 'host_args+=(--host "$h")' in PREPARE and "--host" in options("certs", "new")
    assert cmds[("he", "keygen")] == {"--out": "$dir/he"}  # CLI defaults, as he_files
    owner = cmds[("keys", "new")]["--out"]
    synth, derive, export = (
        cmds[("data", "synth")],
        cmds[("keys", "derive")],
        cmds[("data", "export")],
    )
    assert synth["--key-file"] == derive["--key-file"] == export["--key-file"] == owner
    assert synth["--store"] == export["--store"]
    # One shard bundle and its key per node, client-0000..., as `certs new` names the auth keys.
    assert "for (( i = 0; i < nodes; i++ ))" in PREPARE
    assert "c=$(printf 'client-%04d' \"$i\")" in PREPARE
    assert derive["--client"] == export["--client"] == "$c"
    assert export["--num-clients"] == "$nodes"
    assert derive["--out"] == "$dir/data/$c.key" and export["--out"] == "$dir/data/$c.vfs"
    files = {f"certs/{f}" for f in cert_files} | {f"he/{p.name}" for p in he_files.iterdir()}
    return files | {f"data/{cid}.{ext}" for cid in CLIENTS for ext in ("key", "vfs")}


# -- Dockerfiles ---------------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) of a Dockerfile; comment lines go first, as Docker drops them."""
    lines = [line for line in path.read_text().splitlines() if not line.strip().startswith("#")]
    out = []
    for line in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines():
        line = line.strip()
        if line:
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages(ins: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, from its FROM on."""
    out: list[list[tuple[str, str]]] = []
    for word, rest in ins:
        if word == "FROM":
            out.append([])
        if out:
            out[-1].append((word, rest))
    return out


def split_flags(rest: str) -> tuple[dict[str, list[str]], list[str]]:
    """``--flag=value`` options (by flag) and the other words of an instruction."""
    opts: dict[str, list[str]] = {}
    words = rest.split()
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0).partition("=")
        opts.setdefault(name, []).append(value)
    return opts, words


def build_args(ins: list[tuple[str, str]]) -> dict[str, str]:
    """Name -> default of the ARG instructions."""
    return dict(rest.partition("=")[::2] for word, rest in ins if word == "ARG")


def image_user(path: Path) -> tuple[str, int]:
    """(USER, its uid) of a Dockerfile's final stage; the uid as `useradd --uid` creates it."""
    final = stages(instructions(path))[-1]
    runs = " ".join(rest for word, rest in final if word == "RUN")
    name = next(rest for word, rest in final if word == "USER")
    found = re.search(rf"useradd --uid (\d+) (?:\S+ )*{re.escape(name)}\b", runs)
    assert found, f"{path.name}: USER {name} is not created in the final stage"
    uid = int(found.group(1))
    assert uid != 0 and name != "root", path.name
    return name, uid


IMAGE_USER, IMAGE_UID = image_user(DEPLOY / "docker" / "node.Dockerfile")


def built_images() -> dict[str, str]:
    """Image tag -> Dockerfile, from the README's `docker build` lines."""
    return {
        tag: dockerfile
        for dockerfile, tag in re.findall(r"docker build -f (\S+) -t (\S+) \.", README)
    }


# -- Compose -------------------------------------------------------------------------------------

SECRETS_DIR = "${VEILFED_SECRETS:-.}/"  # Compose resolves "." against deploy/, prepare.sh's DIR


EXPERIMENT = "./k8s/experiment.toml"  # the one repository file Compose mounts (the experiment)


def volume(entry: str) -> tuple[str, str]:
    """(host source, container path) of a short-syntax volume; files under ${VEILFED_SECRETS:-.}
    are written ./certs/..., ./he/..., ./data/... (their default place)."""
    if entry.startswith(SECRETS_DIR):
        entry = "./" + entry.removeprefix(SECRETS_DIR)
    src, dst, *_ = entry.split(":")
    return src, dst


def mounts_of(svc: dict[str, Any]) -> dict[str, str]:
    """Container path -> host source of a service's volumes."""
    return {dst: src for src, dst in map(volume, svc.get("volumes", []))}


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


def mounted_volume(spec: dict[str, Any], container: dict[str, Any], path: str) -> dict[str, Any]:
    """The pod volume ``container`` mounts at the directory of ``path``."""
    mount = next(
        (m for m in container["volumeMounts"] if Path(path).parent == Path(m["mountPath"])), None
    )
    assert mount is not None, f"{path}: not in a volume of {container['name']}"
    return next(v for v in spec["volumes"] if v["name"] == mount["name"])


def secret_behind(
    spec: dict[str, Any], container: dict[str, Any], path: str, secrets: dict[str, list[str]]
) -> tuple[str, str]:
    """(Secret, its file) behind ``path`` in ``container`` (a mounted secret volume)."""
    vol = mounted_volume(spec, container, path)
    assert "secret" in vol, f"{path}: volume {vol['name']} is not a Secret"
    name = vol["secret"]["secretName"]
    keys = secret_keys(secrets[name])
    items = {i["path"]: i["key"] for i in vol["secret"].get("items", [])} or {k: k for k in keys}
    key = items.get(Path(path).name)
    assert key in keys, f"{path}: not in {name}"
    return name, keys[key]


@pytest.fixture(scope="module", name="kustomization")
def kustomization_fixture() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())


@pytest.fixture(scope="module", name="k8s")
def k8s_fixture(kustomization: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    docs = {}
    for res in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / "k8s" / res).read_text()):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def entry_script(container: dict[str, Any], role: str) -> str:
    """The ``sh -c`` script a veilfed container runs: it copies its keys from the Secret mounts,
    then execs the image's `veilfed <role> start` under tini with the container's args."""
    command = container["command"]
    assert command[:2] == ["sh", "-c"] and len(command) == 4, command  # script, $0
    script = command[2]
    last = script.split("&&")[-1].strip()
    assert last == f'exec {" ".join(TINI)} veilfed {role} start "$@"', last
    return script


def copied_files(script: str) -> dict[str, tuple[str, str | None]]:
    """Destination -> (source, mode) of every ``cp``/``install`` in a container's script (mode
    None: a ``cp``, which keeps the Secret mount's group-readable mode)."""
    out = {}
    for command in script.split("&&"):
        words = shlex.split(command)
        if not words or words[0] not in ("cp", "install"):
            continue
        mode = None
        paths = []
        rest = iter(words[1:])
        for word in rest:
            if word == "-m":
                mode = next(rest)
            elif not word.startswith("-"):
                paths.append(word)
        *sources, dest = paths
        for src in sources:
            out[dest + Path(src).name if dest.endswith("/") else dest] = (src, mode)
    return out


def pod_spec(docs: dict[tuple[str, str], dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return docs[(kind, name)]["spec"]["template"]["spec"]


def in_memory(spec: dict[str, Any], container: dict[str, Any], directory: str) -> None:
    """``directory`` is an in-memory emptyDir of the pod: private key copies never hit a disk."""
    vol = mounted_volume(spec, container, f"{directory}/x")
    assert vol.get("emptyDir") == {"medium": "Memory"}, f"{directory}: {vol}"
