"""Deployment trust material: what Flower loads, what the preflight checks refuse."""

from __future__ import annotations

import datetime as dt
import hashlib
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from veilfed.cli.main import app
from veilfed.crypto import cert_checks, certs
from veilfed.errors import UsageError


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> certs.CertBundle:
    return certs.create_bundle(tmp_path_factory.mktemp("certs"), 2, hosts=["coord.example"])


def test_layout_modes_and_formats(bundle: certs.CertBundle) -> None:
    out = bundle.out
    assert bundle.nodes == ("client-0000", "client-0001")
    for private in [out / "ca.key", out / "superlink.key", *(out / "nodes").glob("*.key")]:
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    # Node keys: OpenSSH P-384, as flower-supernode / `flwr supernode register` load them.
    key = serialization.load_ssh_private_key((out / "nodes/client-0000.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    pub = (out / "auth-keys/client-0000.pub").read_bytes()
    assert pub == (out / "nodes/client-0000.pub").read_bytes()
    assert serialization.load_ssh_public_key(pub).public_numbers() == (
        key.public_key().public_numbers()
    )
    nodes = cert_checks.load_node_public_keys(out / "auth-keys")
    assert set(nodes) == {"client-0000", "client-0001"}


def test_server_cert_chains_and_names_hosts(bundle: certs.CertBundle) -> None:
    ca = cert_checks.load_cert(bundle.ca_cert)
    cert = cert_checks.load_cert(bundle.server_cert)
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "coord.example"} <= set(san.get_values_for_type(x509.DNSName))
    assert "127.0.0.1" in {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # The pair loads into an OpenSSL server context (what uvicorn does for the SuperLink).
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
        bundle.server_cert, bundle.server_key
    )
    cert_checks.check_server_material(bundle.out)


def test_refuses_to_overwrite(bundle: certs.CertBundle) -> None:
    with pytest.raises(UsageError, match="already holds ca.pem and .* more"):
        certs.create_bundle(bundle.out, 1)


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("moved", [("ca.pem", "ca.key"), ("ca.pem", "ca.key", "app-signing.key")])
def test_rerun_with_the_ca_moved_offline_changes_nothing(tmp_path, moved) -> None:
    """Attack: move the CA away (as advised) and rerun `certs new` into the same directory."""
    out = tmp_path / "certs"
    certs.create_bundle(out, 2)
    offline = tmp_path / "offline"
    offline.mkdir()
    for name in moved:
        (out / name).rename(offline / name)
    before = _hashes(out)
    proc = CliRunner().invoke(app, ["certs", "new", "--out", str(out), "--nodes", "3"])
    assert proc.exit_code == 2, proc.output
    assert "already holds" in proc.output and "nothing was written" in proc.output
    assert _hashes(out) == before  # node, coordinator and signing keys untouched, nothing added
    fresh = tmp_path / "fresh"
    (fresh / "nodes").mkdir(parents=True)
    (fresh / "nodes" / "client-0002.key").symlink_to(tmp_path / "nowhere")  # dangling counts
    with pytest.raises(
        UsageError,
        match=r"already holds nodes/client-0002.key from .*nothing was written",
    ):
        certs.create_bundle(fresh, 3)
    assert [p.name for p in fresh.rglob("*")] == ["nodes", "client-0002.key"]
    assert not (tmp_path / "nowhere").exists()


def test_expired_and_not_yet_valid(tmp_path) -> None:
    old = certs.create_bundle(
        tmp_path / "old", 1, days=1, not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    )
    with pytest.raises(UsageError, match="expired on 2020-01-02"):
        cert_checks.check_server_material(old.out)
    with pytest.raises(UsageError, match="expired"):
        cert_checks.check_ca(old.out)
    cert = cert_checks.load_cert(old.ca_cert)
    with pytest.raises(UsageError, match="not valid before"):
        cert_checks.check_current(cert, old.ca_cert, now=dt.datetime(2019, 1, 1, tzinfo=dt.UTC))


def test_wrong_ca_and_mismatched_key(bundle: certs.CertBundle, tmp_path) -> None:
    other = certs.create_bundle(tmp_path / "other", 1)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "ca.pem").write_bytes(other.ca_cert.read_bytes())
    (mixed / "superlink.pem").write_bytes(bundle.server_cert.read_bytes())
    (mixed / "superlink.key").write_bytes(bundle.server_key.read_bytes())
    (mixed / "superlink.key").chmod(0o600)
    with pytest.raises(UsageError, match="wrong CA"):
        cert_checks.check_server_material(mixed)
    (mixed / "ca.pem").write_bytes(bundle.ca_cert.read_bytes())
    (mixed / "superlink.key").write_bytes(other.server_key.read_bytes())
    with pytest.raises(UsageError, match="does not match the certificate"):
        cert_checks.check_server_material(mixed)


def test_private_key_checks(bundle: certs.CertBundle, tmp_path) -> None:
    key = bundle.node_key("client-0000")
    assert isinstance(cert_checks.load_node_private_key(key), ec.EllipticCurvePrivateKey)
    loose = tmp_path / "loose.key"
    loose.write_bytes(key.read_bytes())
    loose.chmod(0o644)
    with pytest.raises(UsageError, match="chmod 600"):
        cert_checks.load_node_private_key(loose)
    junk = tmp_path / "junk.key"
    junk.write_bytes(b"not a key")
    junk.chmod(0o600)
    with pytest.raises(UsageError, match="not an OpenSSH EC private key"):
        cert_checks.load_node_private_key(junk)
    with pytest.raises(UsageError, match="not found"):
        cert_checks.load_node_private_key(tmp_path / "missing.key")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="no \\*.pub node keys"):
        cert_checks.load_node_public_keys(empty)


def test_cli_certs_new(tmp_path) -> None:
    runner = CliRunner()
    res = runner.invoke(
        app, ["certs", "new", "--out", str(tmp_path / "c"), "--nodes", "3", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert sorted((tmp_path / "c/auth-keys").iterdir())[2].name == "client-0002.pub"
    again = runner.invoke(app, ["certs", "new", "--out", str(tmp_path / "c"), "--nodes", "1"])
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
    bad = runner.invoke(app, ["certs", "new", "--out", str(tmp_path / "d"), "--nodes", "0"])
    assert bad.exit_code == 2 and "--nodes 0" in bad.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--days", "1e9"], "--days 1000000000.0: give a number of days up to 36500"),
        (["--days", "nan"], "--days nan: give a number of days"),
        (["--days", "inf"], "--days inf: give a number of days"),
        (["--host", "bad host name"], "--host 'bad host name': not an IP address or DNS name"),
        (["--host", ""], "--host '': not an IP address or DNS name"),
        (["--host", "-lead.example"], "not an IP address or DNS name"),
    ],
)
def test_cli_certs_new_bad_days_and_hosts_are_one_line(tmp_path, args, message) -> None:
    res = CliRunner().invoke(
        app, ["certs", "new", "--out", str(tmp_path / "c"), "--nodes", "1", *args]
    )
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit)  # a one-line exit, not a crash
    assert message in res.output and res.output.count("\n") == 1
    assert not (tmp_path / "c" / "ca.pem").exists()


def test_cli_certs_new_accepts_dns_names_and_addresses(tmp_path) -> None:
    res = CliRunner().invoke(
        app,
        ["certs", "new", "--out", str(tmp_path / "c"), "--nodes", "1",
         "--host", "coordinator.example.org", "--host", "10.0.0.7", "--host", "::1"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
