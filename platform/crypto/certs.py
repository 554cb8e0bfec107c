"""Trust material for a real deployment: a CA, the coordinator's TLS certificate, node auth keys.

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
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from veilfed.crypto.app_signing import APP_SIGNING_KEY, TRUSTED_ENTITIES, write_signing_key
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
    from veilfed.data.partition import client_name

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


# --- checks run before starting anything (one-line errors, exit 2) ------------------------------


def _read(path: Path, what: str, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(
            f"{path}: {what} not found; check {flag} (create one with `veilfed certs new`)"
        ) from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read {what} ({exc.strerror}); check {flag}") from None


def load_cert(path: str | Path, flag: str = "--certs") -> x509.Certificate:
    path = Path(path)
    data = _read(path, "certificate", flag)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise UsageError(f"{path}: not a PEM certificate; check {flag}") from None


def check_current(cert: x509.Certificate, path: str | Path, now: dt.datetime | None = None) -> None:
    """Refuse a certificate that has expired or is not valid yet."""
    now = now or dt.datetime.now(dt.UTC)
    if now > cert.not_valid_after_utc:
        raise UsageError(
            f"{path}: certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            "issue new ones with `veilfed certs new`"
        )
    if now < cert.not_valid_before_utc:
        raise UsageError(
            f"{path}: certificate is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check this machine's clock"
        )


def check_signed_by(
    cert: x509.Certificate, ca: x509.Certificate, cert_path: Path, ca_path: Path
) -> None:
    """Refuse a certificate that the given CA did not sign (wrong CA)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise UsageError(
            f"{cert_path}: not signed by the CA in {ca_path} (wrong CA); use the ca.pem from the "
            "same `veilfed certs new` run"
        ) from None


def check_server_material(certs: str | Path, now: dt.datetime | None = None) -> CertBundle:
    """The coordinator's --certs DIR: CA and server cert current, chained, key matching."""
    certs = Path(certs)
    ca_path, cert_path, key_path = certs / CA_CERT, certs / SERVER_CERT, certs / SERVER_KEY
    ca = load_cert(ca_path)
    cert = load_cert(cert_path)
    check_current(ca, ca_path, now)
    check_current(cert, cert_path, now)
    check_signed_by(cert, ca, cert_path, ca_path)
    check_private_mode(key_path, "--certs")
    try:
        key = serialization.load_pem_private_key(_read(key_path, "TLS key", "--certs"), None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise UsageError(f"{key_path}: not a PEM private key; check --certs") from None
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise UsageError(f"{key_path}: does not match the certificate {cert_path}; check --certs")
    return CertBundle(certs, (), cert.not_valid_after_utc)


def check_ca(certs: str | Path, now: dt.datetime | None = None) -> Path:
    """A node's --certs DIR: the CA certificate it verifies the SuperLink with."""
    path = Path(certs) / CA_CERT
    cert = load_cert(path)
    check_current(cert, path, now)
    return path


def check_private_mode(path: Path, flag: str) -> None:
    """Refuse a private key that group or others can read (like ssh)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise UsageError(f"{path}: private key not found; check {flag}") from None
    if mode & 0o077:
        raise UsageError(
            f"{path}: private key is readable by group or others (mode {mode:04o}); "
            f"run `chmod 600 {path}`"
        )


def load_node_private_key(path: str | Path) -> ec.EllipticCurvePrivateKey:
    """A node's --auth-key: an OpenSSH EC private key, as flower-supernode loads it."""
    path = Path(path)
    check_private_mode(path, "--auth-key")
    try:
        key = serialization.load_ssh_private_key(_read(path, "auth key", "--auth-key"), None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError(
            f"{path}: not an OpenSSH EC private key; use a nodes/<node>.key from "
            "`veilfed certs new`"
        )
    return key


def load_node_public_keys(directory: str | Path) -> dict[str, bytes]:
    """The coordinator's --auth-keys DIR: node name -> OpenSSH public key line, one per .pub."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"{directory}: not a directory of node public keys; check --auth-keys")
    keys: dict[str, bytes] = {}
    for path in sorted(directory.glob("*.pub")):
        data = path.read_bytes().strip()
        try:
            key = serialization.load_ssh_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            key = None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise UsageError(f"{path}: not an OpenSSH EC public key; check --auth-keys")
        keys[path.stem] = data
    if not keys:
        raise UsageError(f"{directory}: no *.pub node keys; check --auth-keys")
    return keys
