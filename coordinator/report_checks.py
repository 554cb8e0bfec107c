"""Verifying a client's privacy report before its update counts.

A report is signed with the client's own key (registered at admission) unless the run turned
signing off, and must name this run, this round and the global model the round's message
carried, with the run's δ (and δ ≤ 1/n for the client's n training examples) and accountant;
its ε may not exceed the run's budget. A verified report counts even if the update's arrays are
then rejected: the client did spend that ε, and its report chain must not have a gap.
"""

from __future__ import annotations

import json
from typing import Any

from veilfed.errors import CheckFailed
from veilfed.federation.keys import REPORT
from veilfed.federation.settings import RunSettings
from veilfed.privacy.report_schema import PrivacyReport, SignedReport
from veilfed.privacy.report_signing import KeyRegistry


class ReportChecks:
    """The run's view of each client's spending: check a report, then record it."""

    def __init__(self, settings: RunSettings, keys: KeyRegistry) -> None:
        self.s = settings
        self.keys = keys
        self.train_examples: dict[str, int] = {}  # admitted clients' n (δ <= 1/n per report)

    def check(
        self, rnd: int, cid: str, info: dict[str, Any], digest: str, clients: dict[str, Any]
    ) -> None:
        """Verify client ``cid``'s report of round ``rnd`` against the model ``digest`` sent,
        then record its spending in ``clients``; CheckFailed/UsageError name what is wrong."""
        raw = info.get(REPORT)
        if not isinstance(raw, str):
            raise CheckFailed(f"client {cid}: update has no privacy report; refused")
        if self.s.federated.sign_reports:
            signed = SignedReport.from_json(raw, f"client {cid} round {rnd} report")
            report = self.keys.verify(signed, cid)
        else:
            try:
                data = json.loads(raw)
            except ValueError:
                raise CheckFailed(f"client {cid}: privacy report is not JSON; refused") from None
            report = PrivacyReport.from_dict(data, f"client {cid} round {rnd} report")
        self._check_binding(rnd, cid, report, digest)
        budget = self.s.privacy.epsilon_budget
        if report.epsilon > budget * (1 + 1e-9):
            raise CheckFailed(
                f"client {cid}: reported epsilon {report.epsilon:.4g} exceeds budget {budget:g}"
            )
        entry = clients.setdefault(cid, {"rounds": 0})
        entry.update(
            epsilon=report.epsilon,
            delta=report.delta,
            noise_multiplier=report.noise_multiplier,
            sample_rate=report.sample_rate,
            steps=report.steps_total,
            max_grad_norm=report.max_grad_norm,
            accountant=report.accountant,
            rounds=entry["rounds"] + 1,
            report=raw,
        )

    def _check_binding(self, rnd: int, cid: str, report: PrivacyReport, digest: str) -> None:
        """The report names this run, round and model, and the run's δ and accountant."""
        who = f"client {cid} round {rnd}"
        p = self.s.privacy
        if report.run_id != self.s.run_id:
            raise CheckFailed(f"{who}: report is for run {report.run_id}, not {self.s.run_id}")
        if report.round != rnd:
            raise CheckFailed(f"client {cid}: report is for round {report.round}, not {rnd}")
        if report.model_digest != digest:
            raise CheckFailed(f"{who}: report names another global model than this round's")
        if report.delta != p.delta:
            raise CheckFailed(f"{who}: report delta {report.delta:g} is not the run's {p.delta:g}")
        n = self.train_examples.get(cid, 0)
        if n > 0 and report.delta > 1 / n:
            raise CheckFailed(f"{who}: report delta {report.delta:g} > 1/n = {1 / n:.3g}")
        if report.accountant != p.accountant:
            raise CheckFailed(
                f"{who}: report accounted with {report.accountant}, the run uses {p.accountant}"
            )
