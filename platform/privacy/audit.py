"""The audit's rules: every ε claim of a run checked against numbers the claimant cannot choose.

Inputs: each client's signed reports (``report_schema.py``), the coordinator's signed round log
(``audit_log.py``) and public keys the auditor trusts (``audit_load.py`` finds them). A broken
signature, chain, key or log means the run *cannot* be audited (:class:`UsageError`, exit 2); a
claim that fails a rule is a violation (exit 1). Rules:

* **binding** — every report names this run, a round the log counts it in, and the model digest
  the log gives that round; every report the log counts (every accepted update) is present, so a
  cut or copied chain fails;
* **claim** — the claim is at least the independent recomputation (``audit_accountant``: RDP on
  the report's declared orders for ``rdp``, pessimistic PLD for ``prv``/``gdp``, slack stated
  there); over-claiming is fine, under-claiming is a violation;
* **budget** — max(claim, recomputation less its stated slack) at the pinned δ must not exceed
  the pinned budget (at another δ than the report's: the recomputation alone). Budget
  and δ are pinned by the auditor (``budget``/``delta``) or else by the run's signed settings,
  never by a report;
* **delta** — δ in (0, 1/n] for the client's n training examples (signed settings), the run's δ,
  the same in every report of a client;
* **metric** — a logged ``privacy/client/<id>/eps`` equals the signed claim of that round.
"""

from __future__ import annotations

import math
from typing import Any

from veilfed.errors import CheckFailed, UsageError
from veilfed.privacy.audit_accountant import (
    PLD_ABS_SLACK,
    PLD_REL_SLACK,
    RDP_REL_SLACK,
    pld_epsilon,
    rdp_epsilon,
)
from veilfed.privacy.audit_result import AuditResult, RoundCheck, Violation
from veilfed.privacy.mechanism import Segment, merge
from veilfed.privacy.report_chain import check_chain
from veilfed.privacy.report_schema import KEYS_DIR, REPORTS_DIR, PrivacyReport, SignedReport
from veilfed.privacy.report_signing import verify
from veilfed.privacy.signing import key_id, load_public_key


def _cannot_audit(problems: list[str]) -> UsageError:
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return UsageError(f"cannot audit: {problems[0]}{more}")


def _pinned(
    settings: dict[str, Any], budget: float | None, delta: float | None
) -> tuple[float, float, str]:
    if budget is not None and not (budget > 0 and math.isfinite(budget)):
        raise UsageError(f"--budget must be a finite number > 0 (got {budget})")
    if delta is not None and not 0 < delta < 1:
        raise UsageError(f"--delta must be in (0, 1) (got {delta})")
    signed_budget = settings.get("epsilon_budget")
    if budget is None and not (
        isinstance(signed_budget, int | float) and 0 < signed_budget < math.inf
    ):
        raise UsageError(
            "cannot audit: the run's signed settings pin no finite epsilon budget; pass --budget"
        )
    signed_delta = settings.get("delta")
    if delta is None and not (isinstance(signed_delta, int | float) and 0 < signed_delta < 1):
        raise UsageError("cannot audit: the run's signed settings pin no delta; pass --delta")
    return (
        float(budget if budget is not None else signed_budget),
        float(delta if delta is not None else signed_delta),
        "--budget" if budget is not None else "signed settings",
    )


def audit_reports(
    reports: dict[str, list[SignedReport]],
    public_keys: dict[str, Any],
    round_log: list[dict[str, Any]],
    *,
    budget: float | None = None,
    delta: float | None = None,
    metrics: dict[str, dict[int, float]] | None = None,
    run_id: str = "",
    tracking_uri: str = "",
) -> AuditResult:
    """Verify and recompute every client's reports against the verified ``round_log`` entries.

    ``reports`` and ``public_keys`` are keyed by client id; ``metrics`` maps client id to the
    ``privacy/client/<id>/eps`` values by round, when the run logged them.
    """
    settings = round_log[0]
    pinned_budget, pinned_delta, source = _pinned(settings, budget, delta)
    result = AuditResult(run_id, tracking_uri, pinned_budget, pinned_delta, source)
    clients = settings.get("clients") or {}
    problems: list[str] = []
    for cid in sorted(reports):
        if cid not in public_keys:
            problems.append(f"client {cid}: no public key ({KEYS_DIR}/{cid}.pub or --keys)")
            continue
        key = load_public_key(public_keys[cid], f"public key of client {cid}")
        result.key_ids[cid] = key_id(key)
        pinned_key = (clients.get(cid) or {}).get("key_id")
        if pinned_key and pinned_key != key_id(key):
            problems.append(
                f"client {cid}: key {key_id(key)} is not the key {pinned_key} the coordinator "
                "pinned in the signed settings"
            )
        for s in reports[cid]:
            if s.report.client_id != cid:
                problems.append(
                    f"client {cid} round {s.report.round}: {REPORTS_DIR}/{cid}.jsonl holds a "
                    f"report of client {s.report.client_id}"
                )
                continue
            try:
                verify(s, key)
            except CheckFailed as exc:
                problems.append(str(exc).rsplit(";", 1)[0])
        problems += [str(p) for p in check_chain(reports[cid])]
        reported = {s.report.round for s in reports[cid]}
        problems += [
            f"client {cid} round {r}: epsilon logged as metric but no signed report"
            for r in sorted(set((metrics or {}).get(cid, {})) - reported)
        ]
    if problems:
        raise _cannot_audit(problems)
    result.violations += _binding(reports, round_log, run_id)
    for cid in sorted(reports):
        chain = sorted((s.report for s in reports[cid]), key=lambda r: r.round)
        n = (clients.get(cid) or {}).get("n")
        result.violations += _delta_rules(cid, chain, pinned_delta, settings.get("delta"), n)
        history: list[Segment] = list(chain[0].prior)
        for rep in chain:
            history = merge(history, (rep.noise_multiplier, rep.sample_rate, rep.steps_round))
            check = _check_round(rep, history, pinned_budget, pinned_delta)
            result.checks.append(check)
            result.violations += _rules(check, (metrics or {}).get(cid, {}))
    return result


def _binding(
    reports: dict[str, list[SignedReport]], log: list[dict[str, Any]], run_id: str
) -> list[Violation]:
    out: list[Violation] = []
    rounds = {e["round"]: e for e in log if e.get("kind") == "round"}
    have = {(cid, s.report.round): s.report for cid, chain in reports.items() for s in chain}
    for rnd, entry in sorted(rounds.items()):
        counted = set(entry.get("reported", [])) | set(entry.get("accepted", []))
        for cid in sorted(counted):
            rep = have.get((cid, rnd))
            if rep is None:
                out.append(
                    Violation(
                        cid,
                        rnd,
                        "binding",
                        "the coordinator's signed round log counts this client's update, but the "
                        "run holds no signed report for it (report chain cut?)",
                    )
                )
            elif rep.model_digest != entry.get("model_digest"):
                out.append(
                    Violation(
                        cid,
                        rnd,
                        "binding",
                        f"report is for model {rep.model_digest[:12]}…, the round log's round "
                        f"started from {str(entry.get('model_digest'))[:12]}…",
                    )
                )
    for (cid, rnd), rep in sorted(have.items()):
        if rep.run_id != run_id:
            out.append(
                Violation(
                    cid, rnd, "binding", f"report is of run {rep.run_id} (copied from another run?)"
                )
            )
        elif cid not in set(rounds.get(rnd, {}).get("reported", [])):
            out.append(
                Violation(
                    cid,
                    rnd,
                    "binding",
                    "the coordinator's signed round log did not count this report",
                )
            )
    return out


def _delta_rules(
    cid: str,
    chain: list[PrivacyReport],
    pinned: float,
    run_delta: Any,
    n: Any,
) -> list[Violation]:
    out: list[Violation] = []
    deltas = sorted({r.delta for r in chain})
    if len(deltas) > 1:
        out.append(
            Violation(cid, chain[0].round, "delta", f"delta changes between reports: {deltas}")
        )
    for rep in chain:
        if isinstance(n, int) and n > 0 and rep.delta > 1 / n:
            out.append(
                Violation(
                    cid, rep.round, "delta", f"delta {rep.delta:g} > 1/n = {1 / n:.3g} (n = {n})"
                )
            )
        if isinstance(run_delta, int | float) and rep.delta != run_delta:
            out.append(
                Violation(
                    cid, rep.round, "delta", f"delta {rep.delta:g} is not the run's {run_delta:g}"
                )
            )
    if isinstance(n, int) and n > 0 and pinned > 1 / n:
        out.append(
            Violation(cid, chain[0].round, "delta", f"audit delta {pinned:g} > 1/n = {1 / n:.3g}")
        )
    return out


def _recompute(rep: PrivacyReport, history: list[Segment], delta: float) -> float:
    if rep.accountant == "rdp":
        return rdp_epsilon(history, delta, rep.orders or ())
    return pld_epsilon(history, delta)


def _check_round(
    rep: PrivacyReport, history: list[Segment], budget: float, delta: float
) -> RoundCheck:
    recomputed = _recompute(rep, history, rep.delta)
    # At the report's δ the claim counts too; at another δ only the recomputation exists. The
    # recomputation counts less its stated slack: within it, claim and recomputation are the
    # same ε (rounding, discretisation), and the claim is then what the client enforced.
    at_delta = recomputed if delta == rep.delta else _recompute(rep, history, delta)
    floor = _floor(rep.accountant, at_delta)
    worst = max(rep.epsilon, floor) if delta == rep.delta else max(floor, 0.0)
    return RoundCheck(
        client_id=rep.client_id,
        round=rep.round,
        accountant=rep.accountant,
        noise_multiplier=rep.noise_multiplier,
        sample_rate=rep.sample_rate,
        steps_round=rep.steps_round,
        steps_total=rep.steps_total,
        max_grad_norm=rep.max_grad_norm,
        delta=rep.delta,
        claimed=rep.epsilon,
        recomputed=recomputed,
        rel_diff=(rep.epsilon - recomputed) / recomputed if recomputed > 0 else 0.0,
        audit_delta=delta,
        epsilon_at_audit_delta=worst,
        budget=budget,
    )


def _floor(accountant: str, recomputed: float) -> float:
    """The least claim that is not an under-claim of ``recomputed`` (slack: audit_accountant)."""
    if accountant == "rdp":
        return recomputed - RDP_REL_SLACK * max(1.0, abs(recomputed))
    return recomputed * (1 - PLD_REL_SLACK) - PLD_ABS_SLACK


def _rules(check: RoundCheck, metric: dict[int, float]) -> list[Violation]:
    out: list[Violation] = []

    def flag(kind: str, reason: str) -> None:
        out.append(Violation(check.client_id, check.round, kind, reason))

    claim, ref = check.claimed, check.recomputed
    if check.accountant == "rdp":
        what = "RDP recomputation on its declared orders"
    else:
        what = "PLD recomputation"
    if not math.isfinite(ref) or claim < _floor(check.accountant, ref):
        flag(
            "mismatch",
            f"claimed {check.accountant} epsilon {claim:.6g} is below the {what} {ref:.6g} "
            f"({check.rel_diff:+.2%}): an under-claim",
        )
    if check.epsilon_at_audit_delta > check.budget:
        flag(
            "budget",
            f"epsilon {check.epsilon_at_audit_delta:.6g} (max of claim and recomputation, delta "
            f"{check.audit_delta:g}) exceeds the budget {check.budget:g}",
        )
    if check.round in metric and not math.isclose(metric[check.round], claim, rel_tol=1e-9):
        flag(
            "metric",
            f"metric privacy/client/{check.client_id}/eps = {metric[check.round]:.6g} but the "
            f"signed claim is {claim:.6g}",
        )
    return out
