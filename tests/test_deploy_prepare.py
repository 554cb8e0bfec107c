"""deploy/README.md's preparation and its bare-process deployment, against deploy/prepare.sh.

The README prepares deploy/ (what Compose mounts) and deploy/k8s/ (what kustomize generates
from) for the same number of nodes. Its `veilfed coordinator start` and `veilfed node start`
lines use real options and only files prepare.sh writes, with CKKS secure aggregation wired:
public.ctx to the coordinator, secret.ctx to the node. The node sets its own privacy budget and
an HE contributor floor the federation can meet, and the prepared files are handed to the
images' user.
"""

from __future__ import annotations

import tomllib

from testkit.deploy_files import (  # noqa: F401 (fixtures, requested by name)
    IMAGE_UID,
    NODES,
    ROOT,
    cert_files_fixture,
    check_flags,
    check_he_floor,
    check_node_budget,
    he_files_fixture,
    prepared_fixture,
    readme_command,
    readme_prepare,
)

from veilfed.crypto.he_keys import PUBLIC_NAME, SECRET_NAME


def is_prepared(path: str, prepared: set[str]) -> bool:
    """``path`` is a file or directory deploy/prepare.sh writes (relative to its DIR)."""
    return any(p == path or p.startswith(f"{path}/") for p in prepared)


def test_readme_prepares_compose_and_k8s() -> None:
    """Compose mounts the files prepared in deploy/, kustomize generates from deploy/k8s/."""
    assert set(readme_prepare()) == {"deploy", "deploy/k8s"}
    assert {nodes for nodes, _ in readme_prepare().values()} == {NODES}


def test_readme_processes_use_he(prepared: set[str]) -> None:
    coord = check_flags(readme_command("veilfed coordinator start "), "coordinator", "start")
    assert coord["--he-context"] == f"deploy/he/{PUBLIC_NAME}"
    assert (ROOT / coord["--config"]).is_file()
    for flag in ("--certs", "--auth-keys", "--he-context"):
        assert is_prepared(coord[flag].removeprefix("deploy/"), prepared), coord[flag]
    node = check_flags(readme_command("veilfed node start "), "node", "start")
    assert node["--he-context"] == f"deploy/he/{SECRET_NAME}"
    for flag in ("--certs", "--auth-key", "--shard", "--key-file", "--he-context"):
        assert is_prepared(node[flag].removeprefix("deploy/"), prepared), node[flag]
    check_node_budget(node, "deploy/README.md")
    min_fit = tomllib.loads((ROOT / coord["--config"]).read_text())["federated"]["min_fit_clients"]
    check_he_floor(node, NODES, min_fit, "deploy/README.md")
    chown = readme_command(f"sudo chown -R {IMAGE_UID}:{IMAGE_UID} ")
    assert {"deploy/certs", "deploy/data", "deploy/he"} <= set(chown)
