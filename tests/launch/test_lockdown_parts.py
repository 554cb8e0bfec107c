"""The locked-down SuperLink and signed app bundles, below the process level.

Each guarantee is attacked through the real parts: the signature check is the node's
(``check_bundle``) followed by Flower's own SuperNode verification (``_verify_fab``), with the
trusted-entities file parsed by Flower's own SuperNode parser; the address guard is the ASGI
wrapper the SuperLink runs behind. ``tests/deployment/test_lockdown.py`` repeats the attacks on
live processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from flwr.supercore.fab import Fab
from flwr.supernode.cli.flower_supernode import (
    _try_obtain_trusted_entities,
    _validate_public_keys_ed25519,
)
from flwr.supernode.start_client_internal import _verify_fab
from typer.testing import CliRunner

from veilfed.cli.main import app
from veilfed.crypto import certs
from veilfed.crypto.app_signing import (
    SIGNATURE_KEY,
    check_bundle,
    load_signing_key,
    load_trusted_entities,
    sign_fab,
    trusted_entities_yaml,
)
from veilfed.errors import UsageError
from veilfed.launch.superlink import FleetOnly
from veilfed.launch.supernode import REFUSED, signed_fab_getter

FAB = b"PK\x03\x04 a bundle's bytes"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> certs.CertBundle:
    return certs.create_bundle(tmp_path_factory.mktemp("c"), 1)


def test_signing_key_is_never_replaced(tmp_path: Path) -> None:
    """A replaced key would silently make every node refuse the coordinator (or trust another)."""
    runner = CliRunner()
    first = runner.invoke(app, ["certs", "signing-key", "--out", str(tmp_path)])
    assert first.exit_code == 0, first.output
    before = (tmp_path / "app-signing.key").read_bytes()
    again = runner.invoke(app, ["certs", "signing-key", "--out", str(tmp_path)])
    assert again.exit_code == 2 and "refusing to replace" in again.output
    assert (tmp_path / "app-signing.key").read_bytes() == before
    assert len(load_trusted_entities(tmp_path / "trusted-entities.yaml")) == 1


def flower_accepts(content: bytes, verifications: dict[str, str], trusted: Path) -> bool:
    """Flower's SuperNode decision for a FAB, as in ``_pull_and_store_message``."""
    entities = _try_obtain_trusted_entities(trusted)
    assert entities
    _validate_public_keys_ed25519(entities)
    if not verifications.get("valid_license", ""):
        return False
    return _verify_fab(Fab(hashlib.sha256(content).hexdigest(), content, verifications), entities)


def test_certs_new_writes_a_private_signing_key_flower_can_trust(
    bundle: certs.CertBundle,
) -> None:
    assert bundle.app_signing_key.stat().st_mode & 0o777 == 0o600
    key = load_signing_key(bundle.app_signing_key)
    trusted = load_trusted_entities(bundle.trusted_entities)
    assert [k.public_bytes_raw() for k in trusted.values()] == [key.public_key().public_bytes_raw()]
    signature = sign_fab(FAB, key)
    verdict = check_bundle(FAB, {SIGNATURE_KEY: signature}, trusted)
    assert verdict.ok, verdict.reason
    assert flower_accepts(FAB, verdict.verifications, bundle.trusted_entities)


@pytest.mark.parametrize("attack", ["unsigned", "foreign", "altered", "override", "malformed"])
def test_node_refuses_bundles_no_trusted_key_signed(
    attack: str, bundle: certs.CertBundle, tmp_path: Path
) -> None:
    trusted = load_trusted_entities(bundle.trusted_entities)
    key = load_signing_key(bundle.app_signing_key)
    foreign = ed25519.Ed25519PrivateKey.generate()
    content, overrides = FAB, {SIGNATURE_KEY: sign_fab(FAB, key)}
    if attack == "unsigned":
        overrides = {}
    elif attack == "foreign":
        overrides = {SIGNATURE_KEY: sign_fab(FAB, foreign)}
    elif attack == "altered":
        content = FAB + b" plus code of the attacker's"
    elif attack == "override":  # signed code, unsigned settings
        overrides["config"] = "/elsewhere/exp.toml"
    else:
        overrides = {SIGNATURE_KEY: json.dumps({"key_id": "x", "signature": 3})}
    verdict = check_bundle(content, overrides, trusted)
    assert not verdict.ok and verdict.verifications == {}
    assert not flower_accepts(content, verdict.verifications, bundle.trusted_entities)
    if attack in ("foreign", "altered"):
        # Even handed the raw record, Flower's own check refuses it.
        record = json.loads(overrides[SIGNATURE_KEY])
        raw = {record["key_id"]: json.dumps(record), "valid_license": "Valid"}
        assert not flower_accepts(content, raw, bundle.trusted_entities)
    # A node that trusts the foreign key instead refuses the coordinator's genuine signature.
    other = tmp_path / "other.yaml"
    other.write_text(trusted_entities_yaml([foreign.public_key()]))
    genuine = check_bundle(FAB, {SIGNATURE_KEY: sign_fab(FAB, key)}, load_trusted_entities(other))
    assert not genuine.ok and "not a trusted entity" in genuine.reason


def test_supernode_fetch_attaches_only_trusted_signatures_and_logs_once(
    bundle: certs.CertBundle,
) -> None:
    trusted = load_trusted_entities(bundle.trusted_entities)
    key = load_signing_key(bundle.app_signing_key)
    runs = {1: {SIGNATURE_KEY: sign_fab(FAB, key)}, 2: {}}
    lines: list[str] = []

    def get_fab(fab_hash: str, run_id: int) -> Fab:
        return Fab(fab_hash, FAB, {"valid_license": "Valid", "spoofed": "{}"})

    def get_run(run_id: int) -> SimpleNamespace:
        return SimpleNamespace(override_config=runs[run_id])

    fetch = signed_fab_getter(get_fab, get_run, trusted, lambda lvl, msg, *a: lines.append(msg % a))
    good = fetch("h", 1)
    assert flower_accepts(FAB, good.verifications, bundle.trusted_entities)
    for _ in range(3):  # one message after another of the refused run
        bad = fetch("h", 2)
        assert bad.verifications == {}  # what the SuperLink claimed is never passed on
    refused = [line for line in lines if REFUSED in line]
    assert refused == [f"run 2: {REFUSED}: it is not signed"]


@pytest.mark.parametrize(
    "content, match",
    [
        ("", "no trusted entities"),
        ("[1, 2]\n", "no trusted entities"),
        ("k: 'not a key'\n", "is not an ssh-ed25519 public key"),
        (": : :\n", "cannot read trusted entities"),
        (None, "not found"),
    ],
)
def test_trusted_entities_must_name_ed25519_keys(
    content: str | None, match: str, tmp_path: Path, bundle: certs.CertBundle
) -> None:
    path = tmp_path / "trusted.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UsageError, match=match):
        load_trusted_entities(path)
    # A node auth key (EC P-384) is no app-signing key.
    node_pub = (bundle.auth_keys / "client-0000.pub").read_text().strip()
    path.write_text(f"k: '{node_pub}'\n")
    with pytest.raises(UsageError, match="ssh-ed25519"):
        load_trusted_entities(path)


def _call(guard: FleetOnly, server: tuple[str, int] | None, path: str) -> int:
    """Status of one HTTP request through the guard (the inner app answers 200)."""
    statuses: list[int] = []

    async def inner(scope, receive, send):  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive():  # type: ignore[no-untyped-def]
        return {"type": "http.request", "body": b""}

    async def send(message):  # type: ignore[no-untyped-def]
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    guard.app = inner
    scope = {"type": "http", "path": path, "server": server, "client": ("10.0.0.9", 5555)}
    asyncio.run(guard(scope, receive, send))
    return statuses[0]


def test_public_address_serves_only_the_fleet_api(caplog: pytest.LogCaptureFixture) -> None:
    guard = FleetOnly(lambda *a: None, ("127.0.0.1", 9093))  # type: ignore[arg-type,return-value]
    public, control = ("10.0.0.1", 9092), ("127.0.0.1", 9093)
    with caplog.at_level(logging.WARNING, "veilfed.superlink"):
        for path in (
            "/v1/control/register-node",
            "/v1/control/list-nodes",
            "/v1/control/start-run",
            "/v1/runtime/pull-messages",
            "/docs",
            "/openapi.json",
            "/v1/fleetx",
        ):
            assert _call(guard, public, path) == 404, path
            assert _call(guard, ("127.0.0.1", 9092), path) == 404, path  # public port, via lo
            assert _call(guard, None, path) == 404, path  # cannot tell: fail closed
            assert _call(guard, ("10.0.0.1", 9093), path) == 404, path  # not loopback
            assert _call(guard, control, path) == 200, path
    assert "refused /v1/control/register-node from 10.0.0.9:5555" in caplog.text
    for path in ("/v1/fleet/pull-messages", "/v1/fleet/activate-node", "/health"):
        assert _call(guard, public, path) == 200, path
