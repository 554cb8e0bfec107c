"""Start or remove the deploy/k8s federation on one host with ``podman kube play``.

``podman kube play`` (podman 4.3) runs Pods, Deployments and PersistentVolumeClaims, and mounts
Secrets and ConfigMaps from podman's own stores, but it has no kustomize, no Services and no
cluster DNS. So this script does for podman what kustomize and the cluster would do, and nothing
else: the manifests it plays are deploy/k8s's, unchanged except as listed.

- kustomization.yaml's ``secretGenerator``: each Secret's files are written to a directory of
  their own under ``--workdir``, readable by the pod's user only, and its Secret volumes become
  ``hostPath`` mounts of that directory: podman 4.3 writes a Secret volume's ``data`` without
  base64-decoding it, so binary keys (the CKKS context) cannot pass through podman secrets;
- each ``emptyDir`` (where the containers copy their keys): a fresh host directory per pod
  under ``--workdir``, owned by the pod's user, since podman 4.3 hands a second pod's emptyDir
  to root and its user could not write its keys there;
- its ``configMapGenerator``: a ConfigMap file passed with ``--configmap``;
- its ``images``: the tag is applied to the containers' images, as kustomize would;
- each Service: the Deployment it selects gets a static address on the network, and every pod a
  ``hostAliases`` entry naming it, so ``veilfed-coordinator:9092`` and ``mlflow:5000`` resolve;
- Namespace and Service objects are not played (listed on stdout), nor is anything else
  ``podman kube play`` does not run.

Usage (repository root; ``CONTAINERS_CONF`` as for the other podman commands)::

    python deploy/k8s/podman_play.py up   [--root deploy/k8s] [--secrets DIR] [--network NAME]
    python deploy/k8s/podman_play.py down [--volumes]

``up`` plays the PersistentVolumeClaims, then MLflow, the coordinator and the nodes; the node
pods then wait for their shards (``podman cp`` them in, as ``kubectl cp`` in a cluster). The
rendered files stay in ``--workdir`` (default ``$TMPDIR/veilfed-podman-play``) for ``down``.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

PLAYED = ("PersistentVolumeClaim", "Deployment")
VOLUMES_FILE = "00-volumes.yaml"


def _files(root: Path, entries: list[str]) -> dict[str, bytes]:
    """Key -> bytes of a kustomize generator's ``files`` (``path`` or ``key=path``)."""
    out = {}
    for entry in entries:
        key, eq, path = entry.partition("=")
        source = root / (path if eq else entry)
        out[key if eq else source.name] = source.read_bytes()
    return out


def _kind(doc: dict[str, Any]) -> str:
    return str(doc.get("kind", ""))


class Plan:
    """What ``up`` plays, rendered from a kustomization directory."""

    def __init__(self, root: Path, secrets: Path, subnet: str) -> None:
        kust = yaml.safe_load((root / "kustomization.yaml").read_text())
        self._secret_root = secrets
        self._secret_entries = {g["name"]: g["files"] for g in kust.get("secretGenerator", [])}
        self.configmaps = [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": g["name"]},
                "data": {k: v.decode() for k, v in _files(root, g["files"]).items()},
            }
            for g in kust.get("configMapGenerator", [])
        ]
        tags = {i["name"]: f"{i.get('newName', i['name'])}:{i['newTag']}" for i in kust["images"]}
        docs = [
            doc
            for res in kust["resources"]
            for doc in yaml.safe_load_all((root / res).read_text())
            if doc
        ]
        self.skipped = [
            f"{_kind(d)} {d['metadata']['name']}" for d in docs if _kind(d) not in PLAYED
        ]
        self.volumes = [d for d in docs if _kind(d) == "PersistentVolumeClaim"]
        self.deployments = [d for d in docs if _kind(d) == "Deployment"]
        hosts = iter(ipaddress.ip_network(subnet).hosts())
        next(hosts)  # the gateway
        self.addresses: dict[str, str] = {}  # Deployment -> static address
        aliases = []
        for svc in (d for d in docs if _kind(d) == "Service"):
            selector = svc["spec"].get("selector", {})
            for dep in self.deployments:
                labels = dep["spec"]["template"]["metadata"]["labels"]
                if selector and selector.items() <= labels.items():
                    name = dep["metadata"]["name"]
                    self.addresses.setdefault(name, str(next(hosts)))
                    aliases.append(
                        {"ip": self.addresses[name], "hostnames": [svc["metadata"]["name"]]}
                    )
        for dep in self.deployments:
            spec = dep["spec"]["template"]["spec"]
            spec["hostAliases"] = [*spec.get("hostAliases", []), *aliases]
            for c in [*spec.get("initContainers", []), *spec["containers"]]:
                c["image"] = tags.get(c["image"], c["image"])

    @functools.cached_property
    def secrets(self) -> dict[str, dict[str, bytes]]:
        """Secret name -> its files' bytes; read only by ``up`` (``down`` needs no key)."""
        return {
            name: _files(self._secret_root, entries)
            for name, entries in self._secret_entries.items()
        }


def _run(*args: str, check: bool = True, stdin: bytes | None = None) -> None:
    result = subprocess.run(args, input=stdin, capture_output=True)
    if check and result.returncode != 0:
        sys.exit(f"{' '.join(args[:4])}...: {result.stderr.decode(errors='replace').strip()}")


def _owned_dir(path: Path, uid: int) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chown(path, uid, -1)
    return path


def _host_dirs(plan: Plan, work: Path) -> None:
    """Secret and emptyDir volumes as host directories owned by the pod's ``runAsUser``.

    A Secret's files get mode 0400, as ``fsGroup`` and ``defaultMode`` would make a Secret
    volume's files readable to the pod's user and to no one else.
    """
    for dep in plan.deployments:
        spec = dep["spec"]["template"]["spec"]
        uid = spec.get("securityContext", {}).get("runAsUser", os.getuid())
        for vol in spec.get("volumes", []):
            if "emptyDir" in vol:
                del vol["emptyDir"]
                folder = _owned_dir(work / "emptydir" / dep["metadata"]["name"] / vol["name"], uid)
            elif "secret" in vol:
                name = vol.pop("secret")["secretName"]
                folder = _owned_dir(work / "secrets" / name, uid)
                for key, data in plan.secrets[name].items():
                    (folder / key).write_bytes(data)
                    (folder / key).chmod(0o400)
                    os.chown(folder / key, uid, -1)
            else:
                continue
            vol["hostPath"] = {"path": str(folder), "type": "Directory"}


def up(plan: Plan, work: Path, network: str, subnet: str, engine: str) -> None:
    work.mkdir(parents=True, exist_ok=True)
    _run(engine, "network", "rm", "-f", network, check=False)
    _run(engine, "network", "create", "--subnet", subnet, network)
    _host_dirs(plan, work)
    configmaps = work / "configmaps.yaml"
    configmaps.write_text(yaml.safe_dump_all(plan.configmaps))
    if plan.volumes:
        pvcs = work / VOLUMES_FILE
        pvcs.write_text(yaml.safe_dump_all(plan.volumes))
        _run(engine, "kube", "play", str(pvcs))
    for i, dep in enumerate(plan.deployments, start=1):
        name = dep["metadata"]["name"]
        path = work / f"{i:02d}-{name}.yaml"
        path.write_text(yaml.safe_dump(dep))
        ip = plan.addresses.get(name)
        _run(
            engine, "kube", "play", "--network", network, "--configmap", str(configmaps),
            *(["--ip", ip] if ip else []), str(path),
        )  # fmt: skip
        print(f"played Deployment {name}" + (f" at {ip}" if ip else ""))
    for item in plan.skipped:
        print(f"not played (podman kube play has no such kind): {item}")


def down(plan: Plan, work: Path, network: str, engine: str, volumes: bool) -> None:
    for path in sorted(work.glob("[0-9][0-9]-*.yaml"), reverse=True):
        if path.name == VOLUMES_FILE:
            continue
        _run(engine, "kube", "down", str(path), check=False)
    if volumes:
        for pvc in plan.volumes:
            _run(engine, "volume", "rm", "-f", pvc["metadata"]["name"], check=False)
    _run(engine, "network", "rm", "-f", network, check=False)
    shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--root", type=Path, default=Path(__file__).parent)
    parser.add_argument(
        "--secrets", type=Path, help="where the generators' files are (default: --root)"
    )
    parser.add_argument("--network", default="veilfed-k8s")
    parser.add_argument("--subnet", default="10.89.77.0/24")
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "veilfed-podman-play"
    )
    parser.add_argument("--engine", default="podman")
    parser.add_argument("--volumes", action="store_true", help="down: remove the volumes too")
    args = parser.parse_args(argv)
    plan = Plan(args.root, args.secrets or args.root, args.subnet)
    if args.action == "up":
        up(plan, args.workdir, args.network, args.subnet, args.engine)
    else:
        down(plan, args.workdir, args.network, args.engine, args.volumes)


if __name__ == "__main__":
    main()
