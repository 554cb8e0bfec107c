"""What one round did (:class:`RoundLog`): it becomes MLflow metrics and the run's history."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class RoundLog:
    """What one round did; becomes MLflow metrics and the run's history."""

    round: int
    sampled: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    declined: dict[str, str] = field(default_factory=dict)
    reported: list[str] = field(default_factory=list)  # verified privacy reports (ε spent)
    model_digest: str = ""  # of the global model this round's messages carried
    aggregated: bool = False
    train_loss: float = math.nan
    eval: dict[str, dict[str, float]] = field(default_factory=dict)
    eps: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    he: dict[str, float] = field(default_factory=dict)  # he/* metrics of this round
    wire_bytes: list[int] = field(default_factory=list)  # plaintext update arrays, as received
    dense_bytes: int = 0  # the whole model's arrays as sent: what an uncompressed update carries
    # baseline/, margin/, eval_ci95/, margin_ci95/ and eval_clients/ metrics of this round
    scores: dict[str, float] = field(default_factory=dict)

    def metrics(self, all_eps: dict[str, float], central_eps: float | None) -> dict[str, float]:
        out: dict[str, float] = {
            "round/sampled": len(self.sampled),
            "round/accepted": len(self.accepted),
            "round/failed": len(self.failed),
            "round/rejected": len(self.rejected),
            "round/declined": len(self.declined),
            "round/wall_s": self.wall_s,
            "train/loss": self.train_loss,
        }
        for task, values in self.eval.items():
            for metric, value in values.items():
                out[f"eval/{task}/{metric}"] = value
        finite = [e for e in all_eps.values() if math.isfinite(e)]
        if finite:
            out["privacy/eps_max"] = max(finite)
            out["privacy/eps_mean"] = float(np.mean(finite))
        for cid, eps in self.eps.items():
            out[f"privacy/client/{cid}/eps"] = eps
        if central_eps is not None:
            out["privacy/central_eps"] = central_eps
        if self.wire_bytes and self.dense_bytes:
            sent = float(np.mean(self.wire_bytes))
            out["comm/update_bytes"] = sent
            out["comm/dense_bytes"] = float(self.dense_bytes)
            out["comm/ratio"] = sent / self.dense_bytes
        out.update(self.he)
        out.update(self.scores)
        return out

    def entry(self) -> dict[str, object]:
        """The round's entry in the signed round log (what the audit ties reports to)."""
        return {
            "round": self.round,
            "model_digest": self.model_digest,
            "sampled": sorted(self.sampled),
            "reported": sorted(self.reported),
            "accepted": sorted(self.accepted),
            "aggregated": self.aggregated,
        }


def weighted(values: Iterable[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """Example-weighted mean of each metric over the replies that report it."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for weight, metrics in values:
        for key, value in metrics.items():
            if weight > 0 and math.isfinite(value):
                sums[key] = sums.get(key, 0.0) + weight * value
                weights[key] = weights.get(key, 0.0) + weight
    return {k: sums[k] / weights[k] for k in sums}
