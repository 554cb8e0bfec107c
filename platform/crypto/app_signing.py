"""App-bundle signing: the coordinator signs each Flower App bundle (FAB), nodes run only those.

A FAB is code: the SuperNode unpacks it and puts its directory first on ``sys.path`` before the
ClientApp loads, next to the node's decrypted clips, client key and HE secret. So a node runs a
bundle only when an entity it trusts signed exactly those bytes.

The signature is Flower's own FAB verification format, checked by Flower's own SuperNode code
(``flower-supernode --trusted-entities``): an Ed25519 signature over
``signed_at (8 bytes, big-endian) || sha256(FAB)``, and a trusted-entities YAML file mapping key
ids to OpenSSH ``ssh-ed25519`` public keys. What Flower 1.42 lacks is a way to deliver the
signature of a self-built FAB: its SuperLink keeps verification records only for apps fetched from
Flower Hub and drops them for an uploaded FAB. veilfed therefore carries the signature in the
run's config (:data:`SIGNATURE_KEY`, the one override a run may have) and the node attaches it to
the FAB before Flower's check runs (``veilfed.launch.supernode``).

Files ``veilfed certs new`` writes: ``app-signing.key`` (OpenSSH Ed25519, 0600, the coordinator's
``--app-signing-key``) and ``trusted-entities.yaml`` (its public half, every node's
``--trusted-entities``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from veilfed.errors import UsageError
from veilfed.io import write_bytes_atomic

APP_SIGNING_KEY = "app-signing.key"
TRUSTED_ENTITIES = "trusted-entities.yaml"
SIGNATURE_KEY = "app-signature"  # the run-config key that carries the FAB's signature
LICENSE_KEY = "valid_license"  # Flower's SuperNode checks signatures only when this is set


def key_id(public: ed25519.Ed25519PublicKey) -> str:
    """A stable id for an app-signing key: ``veilfed-app-`` + 16 hex digits of its hash."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "veilfed-app-" + hashlib.sha256(raw).hexdigest()[:16]


def _openssh(public: ed25519.Ed25519PublicKey) -> str:
    return public.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def trusted_entities_yaml(keys: list[ed25519.Ed25519PublicKey]) -> str:
    """The YAML ``flower-supernode --trusted-entities`` reads: key id -> OpenSSH public key."""
    return "".join(f"{key_id(k)}: '{_openssh(k)}'\n" for k in keys)


def write_signing_key(out: Path) -> ed25519.Ed25519PrivateKey:
    """``out/app-signing.key`` (0600) and ``out/trusted-entities.yaml`` with its public half.

    Neither file is ever replaced: a new key would make every node refuse the coordinator's runs.
    """
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = trusted_entities_yaml([key.public_key()]).encode()
    for name in (APP_SIGNING_KEY, TRUSTED_ENTITIES):
        if (out / name).exists():
            raise UsageError(f"{out / name}: already exists; refusing to replace it (--out)")
    write_bytes_atomic(out / APP_SIGNING_KEY, private, mode=0o600, overwrite=False)
    write_bytes_atomic(out / TRUSTED_ENTITIES, public, overwrite=False)
    return key


def load_signing_key(path: Path, flag: str = "--app-signing-key") -> ed25519.Ed25519PrivateKey:
    """The coordinator's app-signing key: an OpenSSH Ed25519 private key file.

    Callers check first that the file is private
    (``veilfed.crypto.cert_checks.check_private_mode``).
    """
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), None)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the app-signing key ({exc.strerror})") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise UsageError(
            f"{path}: not an OpenSSH Ed25519 private key; check {flag} (`veilfed certs new` "
            f"writes {APP_SIGNING_KEY})"
        )
    return key


def load_trusted_entities(
    path: Path, flag: str = "--trusted-entities"
) -> dict[str, ed25519.Ed25519PublicKey]:
    """A node's trusted entities: at least one key id -> Ed25519 public key, nothing else."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UsageError(
            f"{path}: not found; check {flag} (copy {TRUSTED_ENTITIES} from `veilfed certs new`; "
            "a node runs only app bundles these keys signed)"
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise UsageError(f"{path}: cannot read trusted entities ({reason}); check {flag}") from None
    if not isinstance(data, dict) or not data:
        raise UsageError(
            f"{path}: no trusted entities (expected 'KEY_ID: ssh-ed25519 ...' lines); check {flag}"
        )
    keys: dict[str, ed25519.Ed25519PublicKey] = {}
    for name, line in data.items():
        try:
            key = serialization.load_ssh_public_key(str(line).encode())
        except (ValueError, UnsupportedAlgorithm):
            key = None
        if not isinstance(name, str) or not isinstance(key, ed25519.Ed25519PublicKey):
            raise UsageError(
                f"{path}: entry {name!r} is not an ssh-ed25519 public key; check {flag}"
            )
        keys[name] = key
    return keys


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _message(fab: bytes, signed_at: int) -> bytes:
    """What Flower's SuperNode verifies (``create_message_to_sign``)."""
    return signed_at.to_bytes(8, "big") + hashlib.sha256(fab).digest()


def sign_fab(fab: bytes, key: ed25519.Ed25519PrivateKey, signed_at: int | None = None) -> str:
    """The value of :data:`SIGNATURE_KEY` for a run of ``fab``: a JSON signature record."""
    when = int(time.time()) if signed_at is None else signed_at
    return json.dumps(
        {
            "key_id": key_id(key.public_key()),
            "signature": _b64url(key.sign(_message(fab, when))),
            "signed_at": when,
        },
        sort_keys=True,
    )


@dataclass(frozen=True)
class Verdict:
    """A node's decision on one run's bundle; ``verifications`` is what Flower's check gets."""

    ok: bool
    reason: str
    verifications: dict[str, str]


def check_bundle(
    fab: bytes,
    run_overrides: Mapping[str, object],
    trusted: Mapping[str, ed25519.Ed25519PublicKey],
) -> Verdict:
    """Accept ``fab`` only if a trusted key signed these exact bytes and the run changes nothing.

    The signature covers the bundle, including its ``[tool.flwr.app.config]``; a run that
    overrides any other config key would run signed code with unsigned settings, so it is refused.
    On refusal the verifications are empty, and Flower's own check refuses the bundle too.
    """
    extra = sorted(set(run_overrides) - {SIGNATURE_KEY})
    if extra:
        return Verdict(False, f"the run overrides unsigned config keys {extra}", {})
    raw = run_overrides.get(SIGNATURE_KEY)
    if not raw:
        return Verdict(False, "it is not signed", {})
    try:
        record = json.loads(str(raw))
        kid, sig, when = str(record["key_id"]), _unb64url(record["signature"]), record["signed_at"]
        if not isinstance(when, int) or not 0 <= when < 2**63:
            raise ValueError("signed_at")
    except (ValueError, TypeError, KeyError):
        return Verdict(False, "its signature record is malformed", {})
    if kid not in trusted:
        return Verdict(False, f"it is signed by {kid}, not a trusted entity", {})
    try:
        trusted[kid].verify(sig, _message(fab, when))
    except InvalidSignature:
        return Verdict(
            False, f"its signature by {kid} does not match its bytes (altered bundle)", {}
        )
    flower_record = json.dumps({"signature": record["signature"], "signed_at": when})
    return Verdict(True, f"signed by {kid}", {kid: flower_record, LICENSE_KEY: "Valid"})
