"""A client's report chain in one run: recording the next report, and checking a chain.

:func:`record_round` turns the steps an accountant spent since its last report into the next
:class:`~veilfed.privacy.report_schema.PrivacyReport` and links it to the previous one;
:func:`check_chain` lists every way a set of one client's reports breaks the chain invariants
stated in ``report_schema.py`` (links, step totals, client and run ids, rounds).

A node's accountant composes across runs, while a chain is per run: the first report of a run
declares ``prior``, the ``(noise_multiplier, sample_rate, steps)`` segments spent before it (empty
for a fresh accountant), so the audit recomputes all of the spend the claim covers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from veilfed.errors import UsageError
from veilfed.privacy.accountant import ClientAccountant
from veilfed.privacy.mechanism import Segment
from veilfed.privacy.orders import rdp_orders
from veilfed.privacy.report_schema import PrivacyReport, SignedReport


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
    if acc.run_id is not None and acc.run_id != run_id:
        raise UsageError(f"{who}: the accountant's chain is for run {acc.run_id}, not {run_id}")
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
