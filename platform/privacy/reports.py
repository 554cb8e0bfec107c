"""Signed, hash-chained per-round privacy reports, bound to the run, the round and the model.

Each client signs one :class:`PrivacyReport` per round it trains with its own Ed25519 key. The
coordinator verifies it against the key registered for that client (:class:`KeyRegistry`) before
accepting the update, refuses unsigned or mis-signed updates (logs and continues the round) and
stores the reports in MLflow (``report_store.log_reports``); key files are ``signing.py``'s.

A report names what it accounts for: ``run_id`` (the run the coordinator's message named),
``round`` and ``model_digest`` (``veilfed.federation.digest.model_digest`` of the global model the
round's message carried), so the audit can tie it to the coordinator's signed round log and a
report copied into another run, another round or against another model does not match. It also
declares how its ε was computed: ``accountant`` and, for ``rdp``, the Rényi ``orders`` the
conversion minimised over, so an independent accountant recomputes the very same bound.

A client is not sampled every round, so reports chain by link rather than by round number: each
report carries ``prev_round`` (the last round this client reported *in this run*, null for the
first) and ``prev_hash`` (SHA-256 of that report's canonical bytes, "" for the first). A node's
accountant may compose across runs, so the first report of a run declares ``prior``: the
``(noise_multiplier, sample_rate, steps)`` segments spent before it (empty for a fresh
accountant); ``steps_total`` counts every step the claim covers, prior ones included, and grows
by ``steps_round`` along the chain. Deleting, reordering or editing any report breaks the chain
(:func:`check_chain`), and the signature covers the link.

:meth:`PrivacyReport.from_dict` is the one validation of a report, shared by the coordinator (in
the round) and the audit: σ > 0, q in (0, 1], 1 <= steps <= ``MAX_STEPS``, δ in (0, 1), finite
ε >= 0, 1 to ``MAX_ORDERS`` orders in (1, ``MAX_ORDER``]; anything else is a one-line
``UsageError``.

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
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from veilfed.errors import CheckFailed, UsageError
from veilfed.io import write_bytes_atomic
from veilfed.privacy.accounting import (
    MECHANISMS,
    ClientAccountant,
    check_client_id,
    check_mechanism,
)
from veilfed.privacy.signing import generate_signing_key as generate_signing_key  # re-export
from veilfed.privacy.signing import key_id, load_public_key, public_pem
from veilfed.privacy.signing import load_signing_key as load_signing_key  # re-export
from veilfed.privacy.signing import public_key_path as public_key_path  # re-export

REPORTS_DIR = "privacy/reports"
KEYS_DIR = "privacy/keys"
REPORT_VERSION = 2
# Most DP-SGD steps one claim may cover. A bound on input, not on practice (10^9 steps is decades
# of training); RDP composes a step count linearly, so nothing is ever sized by it.
MAX_STEPS = 10**9
# Bounds on the Rényi orders a report may declare. Opacus' default grid has 151 orders, the largest
# 63; orders beyond a few hundred never give the minimum for any σ, q and δ a DP-SGD run uses, yet
# the recomputation of an integer order α sums α + 1 terms, so an unbounded order (10^9, 10^300)
# would make one signed report stall the audit and the coordinator. Any order set within these
# bounds is recomputed in well under a second.
MAX_ORDER = 256.0
MAX_ORDERS = 200
# Most (σ, q, steps) segments a report's ``prior`` may list.
MAX_PRIOR = 512
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
Segment = tuple[float, float, int]


def rdp_orders(accountant: str) -> tuple[float, ...] | None:
    """The Rényi orders Opacus' ``rdp`` accountant minimises over; None for other accountants."""
    if accountant != "rdp":
        return None
    from opacus.accountants.rdp import RDPAccountant

    return tuple(float(a) for a in RDPAccountant.DEFAULT_ALPHAS)


@dataclass(frozen=True)
class PrivacyReport:
    """What a client claims about its privacy spend after one round."""

    client_id: str
    run_id: str
    round: int
    model_digest: str
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
    orders: tuple[float, ...] | None = None
    prior: tuple[Segment, ...] = ()
    epsilon_budget: float | None = None
    version: int = REPORT_VERSION

    @property
    def prior_steps(self) -> int:
        return sum(n for _, _, n in self.prior)

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
        """Parse and range-check a report; errors name ``where`` and the field, in one line."""
        if not isinstance(data, dict):
            raise UsageError(f"{where}: expected a JSON object")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UsageError(f"{where}: unknown field(s) {', '.join(unknown)}")
        optional = ("epsilon_budget", "orders", "prior")
        missing = sorted(n for n in names if n not in data and n not in optional)
        if missing:
            raise UsageError(f"{where}: missing field(s) {', '.join(missing)}")
        if data["version"] != REPORT_VERSION:
            raise UsageError(f"{where}: report version {data['version']!r} is not supported")
        for name in ("client_id", "run_id", "accountant", "prev_hash", "model_digest"):
            if not isinstance(data[name], str):
                raise UsageError(f"{where}: field {name!r} must be a string")
        check_client_id(data["client_id"])
        if not data["run_id"]:
            raise UsageError(f"{where}: field 'run_id' must name the run")
        if not _DIGEST.match(data["model_digest"]):
            raise UsageError(f"{where}: field 'model_digest' must be 64 lowercase hex digits")
        if data["accountant"] not in MECHANISMS:
            raise UsageError(f"{where}: field 'accountant' must be one of {', '.join(MECHANISMS)}")
        rnd = _int(data, "round", where, 1, None)
        steps_round = _int(data, "steps_round", where, 1, MAX_STEPS)
        steps_total = _int(data, "steps_total", where, 1, MAX_STEPS)
        prev = data["prev_round"]
        if prev is not None:
            prev = _int(data, "prev_round", where, 1, None)
        sigma = _number(data, "noise_multiplier", where)
        if not sigma > 0:
            raise UsageError(f"{where}: field 'noise_multiplier' must be > 0 (got {sigma!r})")
        rate = _number(data, "sample_rate", where)
        if not 0 < rate <= 1:
            raise UsageError(f"{where}: field 'sample_rate' must be in (0, 1] (got {rate!r})")
        if not _number(data, "max_grad_norm", where) > 0:
            raise UsageError(f"{where}: field 'max_grad_norm' must be > 0")
        delta = _number(data, "delta", where)
        if not 0 < delta < 1:
            raise UsageError(f"{where}: field 'delta' must be in (0, 1) (got {delta!r})")
        if not _number(data, "epsilon", where) >= 0:
            raise UsageError(f"{where}: field 'epsilon' must be >= 0")
        budget = data.get("epsilon_budget")
        if budget is not None and not _number(data, "epsilon_budget", where) > 0:
            raise UsageError(f"{where}: field 'epsilon_budget' must be > 0 or null")
        orders = _orders(data.get("orders"), data["accountant"], where)
        prior = _prior(data.get("prior", []), where)
        if sum(n for _, _, n in prior) + steps_round > steps_total:
            raise UsageError(
                f"{where}: steps_total {steps_total} is less than the prior and this round's steps"
            )
        return cls(
            **{k: data[k] for k in names if k in data and k not in ("orders", "prior")}
            | {"round": rnd, "prev_round": prev, "orders": orders, "prior": prior}
        )


def _int(data: dict[str, Any], name: str, where: str, low: int, high: int | None) -> int:
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{where}: field {name!r} must be an integer")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise UsageError(f"{where}: field {name!r} must be {bound} (got {value})")
    return value


def _number(data: dict[str, Any], name: str, where: str) -> float:
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{where}: field {name!r} must be a number")
    if not math.isfinite(value):
        raise UsageError(f"{where}: field {name!r} must be finite")
    return float(value)


def _orders(value: Any, accountant: str, where: str) -> tuple[float, ...] | None:
    if value is None:
        if accountant == "rdp":
            raise UsageError(f"{where}: an rdp report must declare its Rényi 'orders'")
        return None
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= MAX_ORDERS:
        raise UsageError(f"{where}: field 'orders' must be a list of 1 to {MAX_ORDERS} numbers")
    out = []
    for a in value:
        if isinstance(a, bool) or not isinstance(a, int | float) or not 1 < a <= MAX_ORDER:
            raise UsageError(
                f"{where}: field 'orders' holds {a!r}; each order must be in (1, {MAX_ORDER:g}]"
            )
        out.append(float(a))
    return tuple(out)


def _prior(value: Any, where: str) -> tuple[Segment, ...]:
    if not isinstance(value, list | tuple) or len(value) > MAX_PRIOR:
        raise UsageError(
            f"{where}: field 'prior' must be a list of at most {MAX_PRIOR} [sigma, rate, steps]"
        )
    out = []
    for i, seg in enumerate(value):
        if not isinstance(seg, list | tuple) or len(seg) != 3:
            raise UsageError(f"{where}: prior[{i}] must be [noise_multiplier, rate, steps]")
        sigma, rate, steps = check_mechanism(tuple(seg), f"{where}: prior[{i}]")
        if not 1 <= steps <= MAX_STEPS:
            raise UsageError(f"{where}: prior[{i}] steps must be in [1, {MAX_STEPS}]")
        out.append((sigma, rate, steps))
    return tuple(out)


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
    run_id: str,
    round: int,
    model_digest: str,
    max_grad_norm: float,
    delta: float,
    epsilon_budget: float | None = None,
) -> PrivacyReport:
    """Report the steps spent since the last report and link it into this run's chain.

    σ and q come from the accountant's history, so the report states exactly what was accounted;
    ``run_id`` and ``model_digest`` name the run and the global model the round's message carried.
    The accountant's chain is this run's (``ClientAccountant.select_run``, or a per-run
    accountant); its first report in the run starts a new chain and declares the segments spent
    before it as ``prior``. Persist ``acc`` (``AccountantStore.save``) after calling this.
    """
    who = f"client {acc.client_id} round {round}"
    steps_round = acc.total_steps - acc.reported_steps
    if steps_round <= 0:
        raise UsageError(f"{who}: no DP-SGD steps since the last report; nothing to report")
    selected = getattr(acc, "run_id", None)
    if selected is not None and selected != run_id:
        raise UsageError(f"{who}: the accountant's chain is for run {selected}, not {run_id}")
    same_run = acc.last_round is not None
    if same_run and round <= acc.last_round:
        raise UsageError(f"{who}: round must be after the last reported round {acc.last_round}")
    sigma, rate, last_steps = acc.history[-1]
    if last_steps < steps_round:
        raise UsageError(
            f"{who}: noise multiplier or sample rate changed within the round; "
            "a report covers one (noise_multiplier, sample_rate) per round"
        )
    report = PrivacyReport(
        client_id=acc.client_id,
        run_id=run_id,
        round=round,
        model_digest=model_digest,
        sample_rate=rate,
        noise_multiplier=sigma,
        steps_round=steps_round,
        steps_total=acc.total_steps,
        max_grad_norm=float(max_grad_norm),
        delta=float(delta),
        epsilon=acc.epsilon(delta),
        accountant=acc.mechanism,
        prev_round=acc.last_round if same_run else None,
        prev_hash=acc.last_report_hash if same_run else "",
        orders=rdp_orders(acc.mechanism),
        prior=() if same_run else _truncate(acc.history, acc.total_steps - steps_round),
        epsilon_budget=(
            float(epsilon_budget)
            if epsilon_budget is not None and math.isfinite(epsilon_budget)
            else None
        ),
    )
    PrivacyReport.from_dict(asdict(report), who)  # the same checks the coordinator applies
    acc.last_round, acc.last_report_hash, acc.reported_steps = (
        round,
        report.digest(),
        acc.total_steps,
    )
    return report


def _truncate(history: list[Segment], steps: int) -> tuple[Segment, ...]:
    """The first ``steps`` steps of ``history``."""
    out: list[Segment] = []
    for sigma, rate, n in history:
        if steps <= 0:
            break
        out.append((sigma, rate, min(n, steps)))
        steps -= n
    return tuple(out)


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
        if rep.run_id != reps[0].run_id:
            bad(f"report is for run {rep.run_id}, the chain's first for run {reps[0].run_id}")
        if prev is None:
            if rep.prev_round is not None or rep.prev_hash:
                bad(f"links to round {rep.prev_round}, whose report is missing")
            elif rep.steps_total != rep.prior_steps + rep.steps_round:
                bad(
                    f"first report but steps_total {rep.steps_total} != prior "
                    f"{rep.prior_steps} + steps_round {rep.steps_round}: earlier reports are "
                    "missing"
                )
        else:
            if rep.prior:
                bad("declares prior spend but is not the first report of the run")
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
