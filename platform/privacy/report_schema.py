"""The per-round privacy report a client signs, and the signed line the run stores.

Each client signs one :class:`PrivacyReport` per round it trains (``report_signing.py``); the
coordinator verifies it before accepting the update, and the audit recomputes its claim. A report
names what it accounts for: ``run_id`` (the run the coordinator's message named), ``round`` and
``model_digest`` (``veilfed.federation.digest.model_digest`` of the global model the round's
message carried), so a report copied into another run, another round or against another model
does not match the coordinator's signed round log. It declares how its ε was computed:
``accountant`` and, for ``rdp``, the Rényi ``orders`` the conversion minimised over
(``orders.py``), so an independent accountant recomputes the very same bound.

Invariants of one report (checked by :meth:`PrivacyReport.from_dict`, the one validation the
coordinator and the audit share; anything else is a one-line ``UsageError``):

* ``version`` is ``REPORT_VERSION``; the meaning of an existing field never changes within a
  version, and a parser refuses every other version;
* ``client_id`` fits ``ids.check_client_id``, ``run_id`` is non-empty, ``model_digest`` is 64
  lowercase hex digits, ``accountant`` is one of ``mechanism.MECHANISMS``;
* σ > 0, q in (0, 1], ``max_grad_norm`` > 0, δ in (0, 1), ε finite and >= 0, ``epsilon_budget``
  > 0 or null, all finite;
* ``round`` >= 1, ``prev_round`` >= 1 or null, ``steps_round`` and ``steps_total`` in
  [1, ``MAX_STEPS``];
* an ``rdp`` report declares 1 to ``MAX_ORDERS`` orders in (1, ``MAX_ORDER``];
* ``prior`` lists at most ``MAX_PRIOR`` segments ``[σ, q, steps]`` with 1 <= steps <=
  ``MAX_STEPS``, and ``steps_total`` >= the prior's steps + ``steps_round``.

Invariants of one client's reports in one run (the chain, ``report_chain.check_chain``): the first
has ``prev_round`` null, ``prev_hash`` "" and ``steps_total`` = prior steps + ``steps_round``;
every later one has no ``prior``, ``prev_round`` = the previous report's round, ``prev_hash`` =
the previous report's :meth:`PrivacyReport.digest` and ``steps_total`` = the previous total +
``steps_round``. A client is not sampled every round, so reports chain by link, not by round
number. Deleting, reordering or editing a report breaks the chain, and the signature covers the
link.

Canonical bytes (:meth:`PrivacyReport.canonical`) are ``signing.canonical_json`` of every field.
MLflow artifact layout (per run; written by ``report_store.py``)::

    privacy/reports/<client_id>.jsonl   one SignedReport per line, ascending round
    privacy/keys/<client_id>.pub        the client's Ed25519 public key, PEM (SubjectPublicKeyInfo)

A SignedReport line is ``{"key_id": ..., "report": {...}, "signature": <base64>}``: the signature
is over the report's canonical bytes, ``key_id`` is ``signing.key_id`` of the signing key.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from veilfed.errors import UsageError
from veilfed.privacy.ids import check_client_id
from veilfed.privacy.mechanism import MECHANISMS, Segment, check_segment
from veilfed.privacy.orders import check_orders
from veilfed.privacy.signing import canonical_hash, canonical_json

REPORTS_DIR = "privacy/reports"
KEYS_DIR = "privacy/keys"
REPORT_VERSION = 2
# Most DP-SGD steps one claim may cover. A bound on input, not on practice (10^9 steps is decades
# of training); RDP composes a step count linearly, so nothing is ever sized by it.
MAX_STEPS = 10**9
# Most (σ, q, steps) segments a report's ``prior`` may list.
MAX_PRIOR = 512
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class PrivacyReport:
    """What a client claims about its privacy spend after one round (invariants: module doc)."""

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
        """The signed bytes: ``signing.canonical_json`` of every field."""
        return canonical_json(asdict(self))

    def digest(self) -> str:
        """SHA-256 hex of :meth:`canonical`; the next report's ``prev_hash``."""
        return canonical_hash(asdict(self))

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
    return check_orders(value, where)


def _prior(value: Any, where: str) -> tuple[Segment, ...]:
    if not isinstance(value, list | tuple) or len(value) > MAX_PRIOR:
        raise UsageError(
            f"{where}: field 'prior' must be a list of at most {MAX_PRIOR} [sigma, rate, steps]"
        )
    out = []
    for i, seg in enumerate(value):
        sigma, rate, steps = check_segment(seg, f"{where}: prior[{i}]")
        if not 1 <= steps <= MAX_STEPS:
            raise UsageError(f"{where}: prior[{i}] steps must be in [1, {MAX_STEPS}]")
        out.append((sigma, rate, steps))
    return tuple(out)


@dataclass(frozen=True)
class SignedReport:
    """A report, its base64 Ed25519 signature over :meth:`PrivacyReport.canonical`, the key id."""

    report: PrivacyReport
    signature: str
    key_id: str

    def to_json(self) -> str:
        """The stored line: ``signing.canonical_json`` of key_id, report and signature."""
        return canonical_json(
            {"key_id": self.key_id, "report": asdict(self.report), "signature": self.signature}
        ).decode("utf-8")

    @classmethod
    def from_json(cls, line: str, where: str = "signed report") -> SignedReport:
        """Parse one stored line; the report is checked by :meth:`PrivacyReport.from_dict`."""
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
