"""Fixtures for deployment tests: trust material and encrypted shard bundles for tiny nodes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from veilfed.crypto import certs
from veilfed.crypto.keys import FernetKey, write_key_file
from veilfed.data.bundle import client_key, export_bundle
from veilfed.data.store import EncryptedStore


@pytest.fixture(scope="session")
def trust(tmp_path_factory: pytest.TempPathFactory) -> certs.CertBundle:
    return certs.create_bundle(tmp_path_factory.mktemp("trust"), 3)


@pytest.fixture(scope="session")
def shard(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(bundle for client-0000, its key file, client-0001's key file)."""
    root = tmp_path_factory.mktemp("shard")
    owner = FernetKey.generate()
    store = EncryptedStore.create(root / "store", owner, chunk_size=1024)
    store.put_many((f"clip-{i}", os.urandom(2000), {"i": i}) for i in range(2))
    export_bundle(store, "client-0000", root / "c0.vfs")
    k0 = root / "c0.key"
    write_key_file(k0, client_key(owner, "client-0000"))
    k1 = root / "c1.key"
    write_key_file(k1, client_key(owner, "client-0001"))
    return root / "c0.vfs", k0, k1
