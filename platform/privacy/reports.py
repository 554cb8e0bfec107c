"""Signed, hash-chained per-round privacy reports (issue 8, part 1).

Each client signs one :class:`PrivacyReport` per round it trains with its own Ed25519 key. The
coordinator verifies it against the key registered for that client (:class:`KeyRegistry`) before
accepting the update, refuses unsigned or mis-signed updates (logs and continues the round) and
stores the reports in MLflow with :func:`log_reports`.

A client is not sampled every round, so reports chain by link rather than by round number: each
report carries ``prev_round`` (the last round this client reported, null for the first) and
``prev_hash`` (SHA-256 of that report's canonical bytes, "" for the first), and
``steps_total = previous steps_total + steps_round``. Deleting, reordering or editing any report
breaks the chain (:func:`check_chain`), and the signature covers the link.

MLflow artifact layout (per run)::

    privacy/reports/<client_id>.jsonl   one SignedReport per line, ascending round
    privacy/keys/<client_id>.pub        the client's Ed25519 public key, PEM (SubjectPublicKeyInfo)

A SignedReport line is ``{"key_id": ..., "report": {...}, "signature": <base64>}``; the signature is
over :meth:`PrivacyReport.canonical` (JSON, sorted keys, no whitespace, UTF-8); ``key_id`` is the
first 16 hex digits of SHA-256 of the raw 32-byte public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from veilfed.errors import CheckFailed, UsageError
from veilfed.io import write_bytes_atomic
from veilfed.privacy.accounting import MECHANISMS, ClientAccountant, check_client_id

REPORTS_DIR = "privacy/reports"
KEYS_DIR = "privacy/keys"
REPORT_VERSION = 1


@dataclass(frozen=True)
class PrivacyReport:
    """What a client claims about its privacy spend after one round."""

    client_id: str
    round: int
    sample_rate: float
    noise_multiplier: float
    steps_round: int
    steps_total: int
    max_grad_norm: float
    delta: float
    epsilon: float
    accountant: str
    prev_round: int | None
    prev_hash: str
    epsilon_budget: float | None = None
    version: int = REPORT_VERSION

    def canonical(self) -> bytes:
        """The signed bytes: JSON with sorted keys and no whitespace."""
        return json.dumps(
            asdict(self), sort_keys=True, separators=(",", ":"), allow_nan=False
        ).encode("utf-8")

    def digest(self) -> str:
        """SHA-256 hex of :meth:`canonical`; the next report's ``prev_hash``."""
        return hashlib.sha256(self.canonical()).hexdigest()

    @classmethod
    def from_dict(cls, data: Any, where: str = "report") -> PrivacyReport:
        """Parse and type-check a report; errors name ``where`` and the field."""
        if not isinstance(data, dict):
            raise UsageError(f"{where}: expected a JSON object")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UsageError(f"{where}: unknown field(s) {', '.join(unknown)}")
        missing = sorted(n for n in names if n not in data and n not in ("epsilon_budget",))
        if missing:
            raise UsageError(f"{where}: missing field(s) {', '.join(missing)}")
        ints = ("round", "steps_round", "steps_total", "version")
        floats = ("sample_rate", "noise_multiplier", "max_grad_norm", "delta", "epsilon")
        for name in ints:
            if isinstance(data[name], bool) or not isinstance(data[name], int):
                raise UsageError(f"{where}: field {name!r} must be an integer")
        for name in floats:
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UsageError(f"{where}: field {name!r} must be a number")
            if not math.isfinite(value):
                raise UsageError(f"{where}: field {name!r} must be finite")
        for name in ("prev_round",):
            value = data[name]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise UsageError(f"{where}: field {name!r} must be an integer or null")
        budget = data.get("epsilon_budget")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int | float)):
            raise UsageError(f"{where}: field 'epsilon_budget' must be a number or null")
        for name in ("client_id", "accountant", "prev_hash"):
            if not isinstance(data[name], str):
                raise UsageError(f"{where}: field {name!r} must be a string")
        if data["version"] != REPORT_VERSION:
            raise UsageError(f"{where}: report version {data['version']} is not supported")
        if data["accountant"] not in MECHANISMS:
            raise UsageError(f"{where}: field 'accountant' must be one of {', '.join(MECHANISMS)}")
        check_client_id(data["client_id"])
        return cls(**data)


@dataclass(frozen=True)
class SignedReport:
    report: PrivacyReport
    signature: str  # base64 Ed25519 signature over report.canonical()
    key_id: str

    def to_json(self) -> str:
        return json.dumps(
            {"key_id": self.key_id, "report": asdict(self.report), "signature": self.signature},
            sort_keys=True,
            separators=(",", ":"),
            allow_nan=False,
        )

    @classmethod
    def from_json(cls, line: str, where: str = "signed report") -> SignedReport:
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(data, dict) or set(data) != {"key_id", "report", "signature"}:
            raise UsageError(f"{where}: expected keys key_id, report, signature")
        if not isinstance(data["key_id"], str) or not isinstance(data["signature"], str):
            raise UsageError(f"{where}: key_id and signature must be strings")
        return cls(
            PrivacyReport.from_dict(data["report"], where), data["signature"], data["key_id"]
        )


@dataclass(frozen=True)
class Problem:
    """One defect found in a client's report chain."""

    client_id: str
    round: int
    reason: str

    def __str__(self) -> str:
        return f"client {self.client_id} round {self.round}: {self.reason}"


def record_round(
    acc: ClientAccountant,
    *,
    round: int,
    max_grad_norm: float,
    delta: float,
    epsilon_budget: float | None = None,
) -> PrivacyReport:
    """Report the steps spent since the last report and link it into the accountant's chain.

    σ and q come from the accountant's history, so the report states exactly what was accounted.
    Persist ``acc`` (``AccountantStore.save``) after calling this.
    """
    who = f"client {acc.client_id} round {round}"
    steps_round = acc.total_steps - acc.reported_steps
    if steps_round <= 0:
        raise UsageError(f"{who}: no DP-SGD steps since the last report; nothing to report")
    if acc.last_round is not None and round <= acc.last_round:
        raise UsageError(f"{who}: round must be after the last reported round {acc.last_round}")
    sigma, rate, last_steps = acc.history[-1]
    if last_steps < steps_round:
        raise UsageError(
            f"{who}: noise multiplier or sample rate changed within the round; "
            "a report covers one (noise_multiplier, sample_rate) per round"
        )
    report = PrivacyReport(
        client_id=acc.client_id,
        round=round,
        sample_rate=rate,
        noise_multiplier=sigma,
        steps_round=steps_round,
        steps_total=acc.total_steps,
        max_grad_norm=float(max_grad_norm),
        delta=float(delta),
        epsilon=acc.epsilon(delta),
        accountant=acc.mechanism,
        prev_round=acc.last_round,
        prev_hash=acc.last_report_hash,
        epsilon_budget=None if epsilon_budget is None else float(epsilon_budget),
    )
    acc.last_round, acc.last_report_hash, acc.reported_steps = (
        round,
        report.digest(),
        acc.total_steps,
    )
    return report


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(report: PrivacyReport, private_key: Ed25519PrivateKey) -> SignedReport:
    signature = private_key.sign(report.canonical())
    return SignedReport(
        report, base64.b64encode(signature).decode("ascii"), key_id(private_key.public_key())
    )


def verify(signed: SignedReport, public_key: Ed25519PublicKey) -> None:
    """Raise :class:`CheckFailed` (one line, client and round) unless the signature holds."""
    rep = signed.report
    who = f"client {rep.client_id} round {rep.round}"
    if signed.key_id != key_id(public_key):
        raise CheckFailed(
            f"{who}: report signed with key {signed.key_id}, but the registered key is "
            f"{key_id(public_key)}; refuse the update"
        )
    try:
        signature = base64.b64decode(signed.signature, validate=True)
        public_key.verify(signature, rep.canonical())
    except (InvalidSignature, binascii.Error, ValueError):
        raise CheckFailed(
            f"{who}: signature does not match the report (altered after signing?); "
            "refuse the update"
        ) from None


def public_key_path(private_key_path: str | Path) -> Path:
    path = Path(private_key_path)
    return path.with_name(path.name + ".pub")


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate_signing_key(path: str | Path) -> Ed25519PrivateKey:
    """New Ed25519 key: PKCS#8 PEM at ``path`` (mode 0600), public PEM at ``path.pub``."""
    path = Path(path)
    if path.exists():
        raise UsageError(f"{path}: already exists; refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_bytes_atomic(path, pem, mode=0o600)
    write_bytes_atomic(public_key_path(path), public_pem(key.public_key()))
    return key


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read signing key ({exc.strerror})") from None
    if mode & 0o077:
        raise UsageError(f"{path}: signing key is readable by others; chmod 600 it")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise UsageError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path}: not an Ed25519 key")
    return key


def load_public_key(
    data: bytes | str | Path | Ed25519PublicKey, where: str = ""
) -> Ed25519PublicKey:
    """A public key from PEM bytes, a PEM file path or an existing key object."""
    if isinstance(data, Ed25519PublicKey):
        return data
    if isinstance(data, Path):
        where = where or str(data)
        try:
            data = data.read_bytes()
        except OSError as exc:
            raise UsageError(f"{where}: cannot read public key ({exc.strerror})") from None
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise UsageError(f"{where or 'public key'}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{where or 'public key'}: not an Ed25519 public key")
    return key


class KeyRegistry:
    """The coordinator's client id -> public key map: ``<dir>/<client_id>.pub`` (PEM)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, client_id: str) -> Path:
        return self.directory / f"{check_client_id(client_id)}.pub"

    def register(self, client_id: str, public_key: bytes | str | Path | Ed25519PublicKey) -> None:
        """Register a client's key; re-registering a *different* key is refused (CheckFailed)."""
        key = load_public_key(public_key, f"client {client_id}")
        path = self.path(client_id)
        if path.exists():
            if key_id(self.get(client_id)) == key_id(key):
                return
            raise CheckFailed(
                f"client {client_id}: already registered with key {key_id(self.get(client_id))}; "
                f"remove {path} to rotate its key"
            )
        write_bytes_atomic(path, public_pem(key))

    def get(self, client_id: str) -> Ed25519PublicKey:
        path = self.path(client_id)
        if not path.exists():
            raise CheckFailed(f"client {client_id}: no public key registered; refuse its updates")
        return load_public_key(path)

    def __contains__(self, client_id: str) -> bool:
        return self.path(client_id).exists()

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        return {p.stem: load_public_key(p) for p in sorted(self.directory.glob("*.pub"))}

    def verify(self, signed: SignedReport | None, client_id: str) -> PrivacyReport:
        """The report of ``client_id`` if signed by its registered key; else CheckFailed."""
        if signed is None:
            raise CheckFailed(f"client {client_id}: update has no signed privacy report; refused")
        if signed.report.client_id != client_id:
            raise CheckFailed(
                f"client {client_id}: report is for client {signed.report.client_id} "
                f"(round {signed.report.round}); refused"
            )
        verify(signed, self.get(client_id))
        return signed.report


def check_chain(reports: list[PrivacyReport | SignedReport]) -> list[Problem]:
    """Defects in one client's reports (any order): links, step totals, client ids, rounds."""
    reps = sorted(
        (r.report if isinstance(r, SignedReport) else r for r in reports), key=lambda r: r.round
    )
    problems: list[Problem] = []
    if not reps:
        return problems
    client = reps[0].client_id
    prev: PrivacyReport | None = None
    for rep in reps:

        def bad(reason: str, rep: PrivacyReport = rep) -> None:
            problems.append(Problem(rep.client_id, rep.round, reason))

        if rep.client_id != client:
            bad(f"report belongs to client {rep.client_id}, not {client}")
        if prev is not None and rep.round == prev.round:
            bad("two reports for the same round")
            continue
        if rep.steps_round < 1:
            bad(f"steps_round must be >= 1 (got {rep.steps_round})")
        if prev is None:
            if rep.prev_round is not None or rep.prev_hash:
                bad(f"links to round {rep.prev_round}, whose report is missing")
            elif rep.steps_total != rep.steps_round:
                bad(
                    f"first report but steps_total {rep.steps_total} != steps_round "
                    f"{rep.steps_round}: earlier reports are missing"
                )
        else:
            if rep.prev_round != prev.round:
                bad(
                    f"links to round {rep.prev_round} but the previous report is round "
                    f"{prev.round}: a report is missing or out of place"
                )
            elif rep.prev_hash != prev.digest():
                bad(f"prev_hash does not match the report of round {prev.round}")
            if prev.steps_total + rep.steps_round != rep.steps_total:
                bad(
                    f"steps_total {rep.steps_total} != previous total {prev.steps_total} + "
                    f"steps_round {rep.steps_round}"
                )
        prev = rep
    return problems


def _tracking_client(tracking_uri: str | None) -> Any:
    from mlflow.tracking import MlflowClient

    from veilfed.tracking import tracking_uri as default_uri

    return MlflowClient(tracking_uri=tracking_uri or default_uri())


def read_logged_reports(client: Any, run_id: str, client_id: str) -> list[SignedReport]:
    """A client's signed reports stored in ``run_id`` ([] when none were logged)."""
    artifact = f"{REPORTS_DIR}/{check_client_id(client_id)}.jsonl"
    if artifact not in {a.path for a in client.list_artifacts(run_id, REPORTS_DIR)}:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, artifact, tmp)
        lines = Path(local).read_text(encoding="utf-8").splitlines()
    return [
        SignedReport.from_json(line, f"run {run_id} {artifact} line {i}")
        for i, line in enumerate(lines, 1)
        if line.strip()
    ]


def log_reports(
    run_id: str,
    signed_reports: list[SignedReport],
    public_keys: dict[str, bytes | str | Path | Ed25519PublicKey],
    tracking_uri: str | None = None,
) -> None:
    """Add this round's signed reports and the clients' public keys to the run's artifacts.

    ``tracking_uri`` defaults to ``veilfed.tracking.tracking_uri()``; a coordinator holding a
    ``veilfed.tracking.Tracker`` passes ``tracker.tracking_uri``.

    Reports already logged for a client are kept (a report for the same round is replaced), so
    the coordinator calls this once per round with the reports it accepted.
    """
    client = _tracking_client(tracking_uri)
    by_client: dict[str, list[SignedReport]] = {}
    for signed in signed_reports:
        by_client.setdefault(signed.report.client_id, []).append(signed)
    for cid, reports in by_client.items():
        if cid not in public_keys:
            raise UsageError(f"client {cid}: log_reports needs its public key")
        merged = {s.report.round: s for s in read_logged_reports(client, run_id, cid)}
        merged.update({s.report.round: s for s in reports})
        text = "".join(merged[r].to_json() + "\n" for r in sorted(merged))
        client.log_text(run_id, text, f"{REPORTS_DIR}/{cid}.jsonl")
    for cid, key in public_keys.items():
        pem = public_pem(load_public_key(key, f"client {check_client_id(cid)}"))
        client.log_text(run_id, pem.decode("ascii"), f"{KEYS_DIR}/{cid}.pub")
