"""Issuing the trust material of a real deployment: a CA, the coordinator's TLS certificate, node
auth keys, and the layout ``veilfed certs new`` writes them in (checked before start-up by
``cert_checks.py``).

Flower's deployment engine needs three things, all produced here with ``cryptography``:

* a CA certificate every node trusts (``--root-certificates``) and the SuperLink serves with
  (``--ssl-ca-certfile``);
* the SuperLink's server certificate and key, signed by that CA, with the coordinator's host names
  and addresses as subject alternative names (TLS clients check them);
* one authentication key pair per node: an ECDSA P-384 key in OpenSSH format, the format
  ``flower-supernode --auth-supernode-private-key`` loads and ``flwr supernode register`` expects
  for the public half. Only nodes whose public key the coordinator registered are let in.

Layout of ``veilfed certs new --out DIR``::

    DIR/ca.pem  DIR/ca.key                    CA (keep ca.key offline; nodes get ca.pem only)
    DIR/superlink.pem  DIR/superlink.key      coordinator TLS
    DIR/auth-keys/<node>.pub                  public halves: the coordinator's --auth-keys DIR
    DIR/nodes/<node>.key (+ .pub)             each node's private key: that node's --auth-key
    DIR/app-signing.key                       coordinator: signs the app bundles it submits
    DIR/trusted-entities.yaml                 its public half: every node runs only what it signed

Private keys are written with mode 0600. Nothing is ever overwritten: if any file ``certs new``
would write already exists, it refuses before writing anything.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from veilfed.crypto.app_signing import APP_SIGNING_KEY, TRUSTED_ENTITIES, write_signing_key
from veilfed.data.partition import client_name
from veilfed.errors import UsageError
from veilfed.io import write_bytes_atomic

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "superlink.pem"
SERVER_KEY = "superlink.key"
AUTH_KEYS_DIR = "auth-keys"
NODE_KEYS_DIR = "nodes"
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
MAX_DAYS = 36_500  # 100 years; X.509 dates end in 9999
_DNS_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_CURVE = ec.SECP384R1()


def node_name(i: int) -> str:
    """Node ``i``'s name; the same ids as the simulation's clients so shards line up."""
    return client_name(i)


@dataclass(frozen=True)
class CertBundle:
    """Paths of everything ``create_bundle`` wrote."""

    out: Path
    nodes: tuple[str, ...]
    not_after: dt.datetime

    @property
    def ca_cert(self) -> Path:
        return self.out / CA_CERT

    @property
    def server_cert(self) -> Path:
        return self.out / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return self.out / SERVER_KEY

    @property
    def auth_keys(self) -> Path:
        return self.out / AUTH_KEYS_DIR

    def node_key(self, node: str) -> Path:
        return self.out / NODE_KEYS_DIR / f"{node}.key"

    @property
    def app_signing_key(self) -> Path:
        return self.out / APP_SIGNING_KEY

    @property
    def trusted_entities(self) -> Path:
        return self.out / TRUSTED_ENTITIES


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "veilfed"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity(days: float, not_before: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    if not math.isfinite(days) or abs(days) > MAX_DAYS:
        raise UsageError(f"--days {days}: give a number of days up to {MAX_DAYS}")
    if days <= 0 and not_before is None:
        raise UsageError(f"--days {days}: a certificate must be valid for a positive duration")
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    return start, start + dt.timedelta(days=days)


def new_ca(
    days: float = 365, not_before: dt.datetime | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign server certificates only (path length 0)."""
    key = ec.generate_private_key(_CURVE)
    start, end = _validity(days, not_before)
    name = _name("veilfed CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def check_host(host: str) -> str:
    """A coordinator host for the certificate: an IP address or an RFC 1123 DNS name."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return host
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise UsageError(
            f"--host {host!r}: not an IP address or DNS name (letters, digits, '-' and dots)"
        )
    return host


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in map(check_host, hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def issue_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: list[str],
    days: float = 365,
    not_before: dt.datetime | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server certificate for the SuperLink, valid for ``hosts`` (DNS names or IPs)."""
    if not hosts:
        raise UsageError("--host: give at least one host name or address for the coordinator")
    key = ec.generate_private_key(_CURVE)
    start, end = _validity(days, not_before)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def new_node_key() -> tuple[bytes, bytes]:
    """(private, public) OpenSSH encodings of a P-384 node authentication key."""
    key = ec.generate_private_key(_CURVE)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + b"\n"


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_bundle(
    out: str | Path,
    nodes: int,
    hosts: list[str] | None = None,
    days: float = 365,
    not_before: dt.datetime | None = None,
) -> CertBundle:
    """Write a CA, the coordinator's certificate and ``nodes`` auth key pairs under ``out``."""
    out = Path(out)
    if nodes < 1:
        raise UsageError(f"--nodes {nodes}: create at least one node key")
    names = tuple(node_name(i) for i in range(nodes))
    _check_free(out, names)
    all_hosts = list(dict.fromkeys([*DEFAULT_HOSTS, *(hosts or [])]))
    ca_key, ca_cert = new_ca(days, not_before)
    srv_key, srv_cert = issue_server_cert(ca_key, ca_cert, all_hosts, days, not_before)
    for name in names:
        private, public = new_node_key()
        _write_new(out / NODE_KEYS_DIR / f"{name}.key", private, mode=0o600)
        _write_new(out / NODE_KEYS_DIR / f"{name}.pub", public)
        _write_new(out / AUTH_KEYS_DIR / f"{name}.pub", public)
    write_signing_key(out)
    _write_new(out / SERVER_KEY, _pem_key(srv_key), mode=0o600)
    _write_new(out / SERVER_CERT, srv_cert.public_bytes(serialization.Encoding.PEM))
    _write_new(out / CA_KEY, _pem_key(ca_key), mode=0o600)
    _write_new(out / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM))
    return CertBundle(out, names, srv_cert.not_valid_after_utc)


def _targets(out: Path, names: tuple[str, ...]) -> list[Path]:
    """Every file :func:`create_bundle` writes for ``names``."""
    per_node = [
        path
        for name in names
        for path in (
            out / NODE_KEYS_DIR / f"{name}.key",
            out / NODE_KEYS_DIR / f"{name}.pub",
            out / AUTH_KEYS_DIR / f"{name}.pub",
        )
    ]
    fixed = (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, APP_SIGNING_KEY, TRUSTED_ENTITIES)
    return [*(out / f for f in fixed), *per_node]


def _check_free(out: Path, names: tuple[str, ...]) -> None:
    """Refuse before writing anything if any target exists (a dangling link counts).

    A CA key moved offline must not let a rerun replace node or coordinator keys already in use.
    """
    taken = [p for p in _targets(out, names) if os.path.lexists(p)]
    if taken:
        more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
        raise UsageError(
            f"{out}: already holds {taken[0].relative_to(out)}{more} from an earlier "
            "`certs new`; refusing to overwrite, nothing was written (choose another --out)"
        )


def _write_new(path: Path, data: bytes, mode: int = 0o644) -> None:
    write_bytes_atomic(path, data, mode=mode, overwrite=False, flag="--out")
