"""A run's signed privacy reports and client keys as MLflow artifacts (see ``report_schema``)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from veilfed.errors import UsageError
from veilfed.privacy.ids import check_client_id
from veilfed.privacy.report_schema import KEYS_DIR, REPORTS_DIR, SignedReport
from veilfed.privacy.signing import load_public_key, public_pem


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
