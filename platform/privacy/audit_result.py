"""What an audit found: each claim next to its recomputation, the violations, the warnings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class RoundCheck:
    """One report's claim next to its recomputation."""

    client_id: str
    round: int
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps_round: int
    steps_total: int
    max_grad_norm: float
    delta: float
    claimed: float
    recomputed: float  # RDP on the declared orders (rdp) or pessimistic PLD (prv, gdp)
    rel_diff: float  # (claimed - recomputed) / recomputed
    audit_delta: float
    epsilon_at_audit_delta: float  # max(claim, recomputation) at the audit's δ
    budget: float


@dataclass(frozen=True)
class Violation:
    client_id: str
    round: int
    kind: str  # "binding" | "mismatch" | "budget" | "delta" | "metric"
    reason: str

    def __str__(self) -> str:
        return f"client {self.client_id} round {self.round}: {self.reason}"


@dataclass
class AuditResult:
    run_id: str
    tracking_uri: str
    budget: float
    delta: float
    budget_source: str  # "--budget" or "signed settings"
    checks: list[RoundCheck] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    key_ids: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "tracking_uri": self.tracking_uri,
            "ok": self.ok,
            "budget": self.budget,
            "delta": self.delta,
            "budget_source": self.budget_source,
            "warnings": list(self.warnings),
            "clients": {
                cid: {
                    "key_id": self.key_ids.get(cid),
                    "rounds": [c.round for c in checks],
                    "steps": checks[-1].steps_total,
                    "epsilon_claimed": checks[-1].claimed,
                    "epsilon_recomputed": checks[-1].recomputed,
                    "accountant": checks[-1].accountant,
                }
                for cid, checks in self.by_client().items()
            },
            "checks": [asdict(c) for c in self.checks],
            "violations": [asdict(v) | {"message": str(v)} for v in self.violations],
        }

    def by_client(self) -> dict[str, list[RoundCheck]]:
        out: dict[str, list[RoundCheck]] = {}
        for check in self.checks:
            out.setdefault(check.client_id, []).append(check)
        return out
