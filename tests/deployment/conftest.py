"""Fixtures for real-process tests: a cluster that cleans up after itself, trust, shards."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit.cluster import VEILFED, Cluster

from veilfed.crypto import certs


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    left = c.shutdown()
    assert not left, f"processes left behind (killed): {left}"


@pytest.fixture(scope="module")
def trust(tmp_path_factory: pytest.TempPathFactory) -> certs.CertBundle:
    return certs.create_bundle(tmp_path_factory.mktemp("trust"), 3)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Three clients' encrypted shard bundles of a tiny synthetic world: id -> (bundle, key)."""
    root = tmp_path_factory.mktemp("shards")

    def cli(*args: str) -> None:
        res = subprocess.run([*VEILFED, *args], cwd=root, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr

    cli("keys", "new", "--out", "owner.key")
    cli("data", "synth", "--clips", "12", "--frames", "4", "--size", "32", "--store", "store",
        "--key-file", "owner.key")  # fmt: skip
    out = {}
    for i in range(3):
        cid = f"client-{i:04d}"
        cli("keys", "derive", "--key-file", "owner.key", "--client", cid, "--out", f"{cid}.key")
        cli("data", "export", "--store", "store", "--key-file", "owner.key", "--client", cid,
            "--num-clients", "3", "--out", f"{cid}.vfs")  # fmt: skip
        out[cid] = (root / f"{cid}.vfs", root / f"{cid}.key")
    return out
