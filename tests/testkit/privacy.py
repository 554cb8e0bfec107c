"""Shared builders: real accountants producing real signed report chains, and a real coordinator
round log signed with a real coordinator key (imported by tests)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant

from veilfed.privacy.accountant import ClientAccountant
from veilfed.privacy.audit_log import COORDINATOR_KEY_ARTIFACT, LOG_ARTIFACT, RoundLogWriter
from veilfed.privacy.report_chain import record_round
from veilfed.privacy.report_schema import SignedReport
from veilfed.privacy.report_signing import sign
from veilfed.privacy.report_store import log_reports
from veilfed.privacy.signing import key_id

DELTA = 1e-5
N = 1000  # training examples per client: δ <= 1/n holds


def google_rdp(history: list[tuple[float, float, int]], delta: float = DELTA) -> float:
    """ε of ``history`` by Google's dp-accounting RDP accountant: an independent reference."""
    acc = rdp_privacy_accountant.RdpAccountant()
    for sigma, q, n in history:
        acc.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), n)
    return acc.get_epsilon(delta)


def digest(run_id: str, rnd: int) -> str:
    """A stand-in for the model digest of ``run_id``'s round ``rnd`` (64 hex digits)."""
    return hashlib.sha256(f"{run_id}/{rnd}".encode()).hexdigest()


def make_chain(
    client_id: str,
    key: Ed25519PrivateKey,
    rounds: list[int],
    sigma: float = 1.1,
    rate: float = 0.05,
    steps: int = 20,
    budget: float | None = 10.0,
    run_id: str = "run-a",
    accountant: str = "rdp",
    delta: float = DELTA,
) -> list[SignedReport]:
    """Signed reports of a client that trained ``steps`` steps in each of ``rounds``."""
    acc = ClientAccountant(client_id, accountant)
    out = []
    for r in rounds:
        acc.step(sigma, rate, steps)
        report = record_round(
            acc,
            run_id=run_id,
            round=r,
            model_digest=digest(run_id, r),
            max_grad_norm=1.0,
            delta=delta,
            epsilon_budget=budget,
        )
        out.append(sign(report, key))
    return out


def write_round_log(
    run_dir: Path,
    run_id: str,
    counted: dict[int, list[str]],
    keys: dict[str, Ed25519PrivateKey],
    *,
    budget: float | None = 10.0,
    delta: float = DELTA,
    n: int = N,
    close: bool = True,
) -> RoundLogWriter:
    """The coordinator's signed log of a run whose round r counted the reports of ``counted[r]``."""
    writer = RoundLogWriter(run_dir, run_id)
    clients = {cid: {"n": n, "key_id": key_id(k.public_key())} for cid, k in sorted(keys.items())}
    writer.settings(
        {"delta": delta, "epsilon_budget": budget, "accountant": "rdp", "clients": clients}
    )
    for rnd in sorted(counted):
        writer.round(
            {
                "round": rnd,
                "model_digest": digest(run_id, rnd),
                "sampled": sorted(counted[rnd]),
                "reported": sorted(counted[rnd]),
                "accepted": sorted(counted[rnd]),
                "aggregated": True,
            }
        )
    if close:
        writer.end(max(counted, default=0))
    return writer


def counted_by_round(reports: list[SignedReport]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for s in reports:
        out.setdefault(s.report.round, []).append(s.report.client_id)
    return out


def publish(client, uri: str, run_id: str, reports, pubs, writer: RoundLogWriter) -> None:
    """Put reports, client keys, the round log and the coordinator key into the MLflow run."""
    if reports:
        log_reports(run_id, reports, pubs, tracking_uri=uri)
    client.log_text(run_id, writer.path.read_text(), LOG_ARTIFACT)
    client.log_text(run_id, writer.public_pem.decode("ascii"), COORDINATOR_KEY_ARTIFACT)
