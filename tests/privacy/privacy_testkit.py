"""Shared builder: real accountants producing real signed report chains (imported by tests)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veilfed.privacy.accounting import ClientAccountant
from veilfed.privacy.reports import SignedReport, record_round, sign

DELTA = 1e-5


def make_chain(
    client_id: str,
    key: Ed25519PrivateKey,
    rounds: list[int],
    sigma: float = 1.1,
    rate: float = 0.05,
    steps: int = 20,
    budget: float | None = 10.0,
) -> list[SignedReport]:
    """Signed reports of a client that trained ``steps`` steps in each of ``rounds``."""
    acc = ClientAccountant(client_id)
    out = []
    for r in rounds:
        acc.step(sigma, rate, steps)
        report = record_round(acc, round=r, max_grad_norm=1.0, delta=DELTA, epsilon_budget=budget)
        out.append(sign(report, key))
    return out
