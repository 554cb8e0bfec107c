"""A run's signed privacy reports and client keys as MLflow artifacts (see ``report_schema``)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from veilfed.errors import UsageError
from veilfed.io import write_text_atomic
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


def _read_chain(path: Path) -> list[SignedReport]:
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [
        SignedReport.from_json(line, f"{path} line {i}")
        for i, line in enumerate(lines, 1)
        if line.strip()
    ]


def log_reports(
    run_id: str,
    signed_reports: list[SignedReport],
    public_keys: dict[str, bytes | str | Path | Ed25519PublicKey],
    tracking_uri: str | None = None,
    chains_dir: str | Path | None = None,
) -> None:
    """Add this round's signed reports and the clients' public keys to the run's artifacts.

    ``tracking_uri`` defaults to ``veilfed.tracking.tracking_uri()``; a coordinator holding a
    ``veilfed.tracking.Tracker`` passes ``tracker.tracking_uri``.

    Reports already logged for a client are kept (a report for the same round is replaced), so
    the coordinator calls this once per round with the reports it accepted. They are read back
    from MLflow, or with ``chains_dir`` from ``chains_dir/<client>.jsonl``, which this call keeps
    up to date: reading every chain back from MLflow costs ~0.5 s per client a round. All files
    of a call go up in one upload per artifact folder.
    """
    client = _tracking_client(tracking_uri)
    by_client: dict[str, list[SignedReport]] = {}
    for signed in signed_reports:
        by_client.setdefault(signed.report.client_id, []).append(signed)
    for cid in by_client:
        if cid not in public_keys:
            raise UsageError(f"client {cid}: log_reports needs its public key")
    with tempfile.TemporaryDirectory() as tmp:
        staged, keys = Path(tmp) / "reports", Path(tmp) / "keys"
        staged.mkdir()
        keys.mkdir()
        for cid, reports in by_client.items():
            name = f"{check_client_id(cid)}.jsonl"
            if chains_dir is None:
                stored = read_logged_reports(client, run_id, cid)
            else:
                stored = _read_chain(Path(chains_dir) / name)
            merged = {s.report.round: s for s in stored}
            merged.update({s.report.round: s for s in reports})
            text = "".join(merged[r].to_json() + "\n" for r in sorted(merged))
            if chains_dir is not None:
                write_text_atomic(Path(chains_dir) / name, text)
            (staged / name).write_text(text, encoding="utf-8")
        for cid, key in public_keys.items():
            pem = public_pem(load_public_key(key, f"client {check_client_id(cid)}"))
            (keys / f"{cid}.pub").write_bytes(pem)
        if by_client:
            client.log_artifacts(run_id, str(staged), REPORTS_DIR)
        if public_keys:
            client.log_artifacts(run_id, str(keys), KEYS_DIR)
