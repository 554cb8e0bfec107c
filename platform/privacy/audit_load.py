"""Loading a run for the audit: reports, metrics and round log from MLflow; keys from the auditor.

Public keys are taken from ``keys_dir`` (``--keys``: the clients' ``<id>.pub`` and the
coordinator's ``coordinator.pem``, obtained independently of the run, e.g. the coordinator's
``<run_dir>/keys``). Keys found only in the run's MLflow artifacts are used with a warning in the
result: whoever can write the run could have replaced both a report and its key.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from veilfed.errors import UsageError
from veilfed.privacy.audit import audit_reports
from veilfed.privacy.audit_log import (
    COORDINATOR_KEY_ARTIFACT,
    COORDINATOR_PEM,
    LOG_ARTIFACT,
    read_round_log,
)
from veilfed.privacy.audit_result import AuditResult
from veilfed.privacy.report_schema import KEYS_DIR, REPORTS_DIR, SignedReport
from veilfed.privacy.report_signing import KeyRegistry
from veilfed.privacy.report_store import read_logged_reports
from veilfed.privacy.signing import load_public_key

log = logging.getLogger("veilfed.audit")

MLFLOW_KEYS_WARNING = (
    "public keys taken from the run's own MLflow artifacts: whoever can write the run could have "
    "replaced both a report and its key; pass --keys with keys obtained independently"
)


def _check_store(uri: str) -> None:
    """Refuse to audit a local store that does not exist (MLflow would silently create one)."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if not path.is_file():
            raise UsageError(
                f"MLflow store {uri}: no such database file; set MLFLOW_TRACKING_URI to the "
                "run's store"
            )


def _download_text(client: Any, run_id: str, path: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, path, tmp)).read_text(encoding="utf-8")


def load_run(run_id: str, tracking_uri: str) -> dict[str, Any]:
    """Reports, logged public keys (PEM), ε metrics, round log text and logged coordinator key."""
    from mlflow.tracking import MlflowClient

    _check_store(tracking_uri)
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        run = client.get_run(run_id)
    except MlflowException as exc:
        if "not found" in str(exc).lower() or getattr(exc, "error_code", "") in (
            "RESOURCE_DOES_NOT_EXIST",
            "INVALID_PARAMETER_VALUE",
        ):
            raise UsageError(f"run {run_id}: not found in MLflow store {tracking_uri}") from None
        raise UsageError(
            f"MLflow store {tracking_uri}: cannot be reached ({str(exc).splitlines()[0][:160]})"
        ) from None
    except Exception as exc:  # bad URI schemes, drivers, permissions
        raise UsageError(
            f"MLflow store {tracking_uri}: cannot be opened ({str(exc).splitlines()[0][:160]})"
        ) from None
    try:
        files = [a.path for a in client.list_artifacts(run_id, REPORTS_DIR)]
        key_files = {a.path for a in client.list_artifacts(run_id, KEYS_DIR)}
        privacy = {a.path for a in client.list_artifacts(run_id, "privacy")}
    except Exception as exc:
        raise UsageError(f"run {run_id}: cannot list artifacts ({exc})") from None
    client_ids = sorted(Path(f).stem for f in files if f.endswith(".jsonl"))
    if not client_ids:
        raise UsageError(
            f"run {run_id}: no signed privacy reports under {REPORTS_DIR}/; nothing to audit"
        )
    if LOG_ARTIFACT not in privacy:
        raise UsageError(
            f"cannot audit: run {run_id} has no signed round log ({LOG_ARTIFACT}); the reports "
            "cannot be tied to the rounds the coordinator counted"
        )
    reports = {cid: read_logged_reports(client, run_id, cid) for cid in client_ids}
    keys: dict[str, bytes] = {}
    for cid in client_ids:
        path = f"{KEYS_DIR}/{cid}.pub"
        if path in key_files:
            keys[cid] = _download_text(client, run_id, path).encode("ascii")
    coordinator = None
    if COORDINATOR_KEY_ARTIFACT in privacy:
        coordinator = _download_text(client, run_id, COORDINATOR_KEY_ARTIFACT).encode("ascii")
    prefix = "privacy/client/"
    metrics: dict[str, dict[int, float]] = {}
    for name in run.data.metrics:
        if name.startswith(prefix) and name.endswith("/eps"):
            cid = name[len(prefix) : -len("/eps")]
            metrics[cid] = {m.step: m.value for m in client.get_metric_history(run_id, name)}
    return {
        "reports": reports,
        "keys": keys,
        "metrics": metrics,
        "round_log": _download_text(client, run_id, LOG_ARTIFACT),
        "coordinator_key": coordinator,
    }


def keys_from_dir(keys_dir: str | Path, client_ids: list[str]) -> tuple[dict[str, bytes], bytes]:
    """Client keys (``<id>.pub``) and the coordinator key (``coordinator.pem``) of ``--keys``."""
    registry = KeyRegistry(keys_dir)
    if not registry.directory.is_dir():
        raise UsageError(f"--keys {keys_dir}: no such directory")
    coordinator = registry.directory / COORDINATOR_PEM
    if not coordinator.is_file():
        raise UsageError(
            f"--keys {keys_dir}: no {COORDINATOR_PEM} (the coordinator's public key, in its "
            "run directory's keys/)"
        )
    keys = {cid: registry.path(cid).read_bytes() for cid in client_ids if cid in registry}
    return keys, coordinator.read_bytes()


def audit_run(
    run_id: str,
    tracking_uri: str | None = None,
    *,
    budget: float | None = None,
    delta: float | None = None,
    keys_dir: str | Path | None = None,
) -> AuditResult:
    """Audit ``run_id`` in the store at ``tracking_uri`` (default: ``veilfed.tracking``'s)."""
    from veilfed.tracking import tracking_uri as default_uri

    uri = tracking_uri or default_uri()
    run = load_run(run_id, uri)
    reports: dict[str, list[SignedReport]] = run["reports"]
    warnings: list[str] = []
    if keys_dir is not None:
        keys, coordinator = keys_from_dir(keys_dir, sorted(reports))
    else:
        keys, coordinator = run["keys"], run["coordinator_key"]
        if coordinator is None:
            raise UsageError(
                f"cannot audit: run {run_id} publishes no coordinator key; pass --keys"
            )
        warnings.append(MLFLOW_KEYS_WARNING)
        log.warning(MLFLOW_KEYS_WARNING)
    entries = read_round_log(
        run["round_log"], load_public_key(coordinator, "coordinator public key"), run_id
    )
    result = audit_reports(
        reports,
        keys,
        entries,
        budget=budget,
        delta=delta,
        metrics=run["metrics"],
        run_id=run_id,
        tracking_uri=uri,
    )
    result.warnings = warnings
    return result
