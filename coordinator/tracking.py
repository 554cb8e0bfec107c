"""What the coordinator puts in its MLflow run as the rounds go: metrics, reports, round log.

Per round: the round's metrics (step = round); the verified signed privacy reports of the
clients that reported (``privacy/reports/<id>.jsonl``, with ``privacy/keys/<id>.pub``) through
``veilfed.privacy.report_store.log_reports``, each client's chain kept in ``<run>/reports/``;
and the coordinator's signed round log (``veilfed.privacy.audit_log``): the privacy settings
first, then one entry per round and an end entry, uploaded whole after every change. Reports
and the round log exist only when client DP is on and reports are signed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from veilfed.coordinator.round_record import RoundLog
from veilfed.federation.settings import RunSettings
from veilfed.privacy.audit_log import COORDINATOR_KEY_ARTIFACT, LOG_ARTIFACT, RoundLogWriter
from veilfed.privacy.report_schema import SignedReport
from veilfed.privacy.report_signing import KeyRegistry
from veilfed.privacy.report_store import log_reports
from veilfed.privacy.signing import key_id

REPORT_CHAINS = "reports"  # under the run directory


class RunTracking:
    """The coordinator's uploads to its run's MLflow ``tracker``."""

    def __init__(self, settings: RunSettings, tracker: Any, keys: KeyRegistry) -> None:
        self.s = settings
        self.tracker = tracker
        self.keys = keys
        signed = settings.privacy.enabled and settings.federated.sign_reports
        self.round_log = RoundLogWriter(settings.run_dir, settings.run_id) if signed else None

    def start(self, train_examples: dict[str, int]) -> None:
        """The signed round log's first entry: the privacy settings the audit pins."""
        if self.round_log is None:
            return
        p = self.s.privacy
        budget = p.epsilon_budget
        keys = self.keys.public_keys()
        clients = {
            cid: {"n": n, "key_id": key_id(keys[cid]) if cid in keys else None}
            for cid, n in sorted(train_examples.items())
        }
        text = self.round_log.settings(
            {
                "delta": p.delta,
                "epsilon_budget": budget if math.isfinite(budget) else None,
                "accountant": p.accountant,
                "clients": clients,
            }
        )
        self.tracker.log_text(self.round_log.public_pem.decode("ascii"), COORDINATOR_KEY_ARTIFACT)
        self.tracker.log_text(text, LOG_ARTIFACT)

    def round(self, rlog: RoundLog, clients: dict[str, dict[str, Any]]) -> None:
        """Store the round's verified reports (``clients[cid]["report"]``) and its log entry."""
        if self.round_log is None:
            return
        if rlog.reported:
            log_reports(
                self.s.run_id,
                [SignedReport.from_json(clients[cid]["report"]) for cid in rlog.reported],
                {cid: self.keys.path(cid) for cid in rlog.reported},
                tracking_uri=self.tracker.tracking_uri,
                chains_dir=Path(self.s.run_dir) / REPORT_CHAINS,
            )
        self.tracker.log_text(self.round_log.round(rlog.entry()), LOG_ARTIFACT)

    def metrics(self, metrics: dict[str, float], rnd: int) -> None:
        self.tracker.log_metrics(metrics, step=rnd)

    def end(self, rounds: int) -> None:
        if self.round_log is not None:
            self.tracker.log_text(self.round_log.end(rounds), LOG_ARTIFACT)
