"""A real node's privacy policy: what it accepts from a coordinator, whatever the run says.

The run settings travel in the coordinator's message, so a node checks them against its own
policy (``veilfed node start`` options, carried in Flower's node config) before it trains:

``epsilon-budget``  (``--budget``) the most ε this node's shard spends over *every* run and round
                    it joins (its accountant is cumulative); 0: the budget each run asks, which
                    then also caps the cumulative total;
``max-delta``       (``--max-delta``) the largest δ it accepts; always also δ < 1/n for the n
                    training examples of its shard;
``accountants``     (``--accountants``) the accountants it accepts, comma-separated: ``rdp``,
                    ``prv`` (default both); ``gdp`` is an approximation, not a bound, and never
                    accepted;
``allow-no-dp``     (``--allow-no-dp``) whether it trains in a run without client DP (ε = inf).

A refusal is one line naming the client and the setting, sent back as a declined reply (the
coordinator logs it and the round goes on) and logged on the node. Virtual clients in a
simulation have no node policy: the run's own validated settings apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from veilfed.coordinator.settings import ClientPrivacy
from veilfed.errors import UsageError

BUDGET_KEY = "epsilon-budget"
MAX_DELTA_KEY = "max-delta"
ACCOUNTANTS_KEY = "accountants"
NO_DP_KEY = "allow-no-dp"
NODE_ACCOUNTANTS = ("rdp", "prv")  # rigorous bounds; gdp is a CLT approximation


def parse_accountants(text: str, where: str = "--accountants") -> tuple[str, ...]:
    """``"rdp,prv"`` → ``("rdp", "prv")``; anything outside ``NODE_ACCOUNTANTS`` is refused."""
    names = tuple(dict.fromkeys(n.strip() for n in str(text).split(",") if n.strip()))
    bad = [n for n in names if n not in NODE_ACCOUNTANTS]
    if bad or not names:
        raise UsageError(
            f"{where} {text!r}: use a comma-separated subset of {', '.join(NODE_ACCOUNTANTS)}"
            + (" (gdp is an approximation, not a privacy bound)" if "gdp" in bad else "")
        )
    return names


@dataclass(frozen=True)
class NodePolicy:
    """What this node accepts; see the module docstring for each setting."""

    budget: float = 0.0
    max_delta: float = 0.0  # 0: only δ < 1/n
    accountants: tuple[str, ...] = NODE_ACCOUNTANTS
    allow_no_dp: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.budget) and self.budget >= 0):
            raise UsageError(f"--budget {self.budget:g}: use a positive epsilon (0: the run's)")
        if not (math.isfinite(self.max_delta) and 0 <= self.max_delta < 1):
            raise UsageError(f"--max-delta {self.max_delta:g}: use a delta in (0, 1)")
        parse_accountants(",".join(self.accountants))

    @classmethod
    def from_node_config(cls, cfg: dict[str, Any]) -> NodePolicy:
        """The policy in a node config (as ``node_config`` writes it); one-line errors."""
        try:
            return cls(
                budget=float(cfg.get(BUDGET_KEY, 0.0)),
                max_delta=float(cfg.get(MAX_DELTA_KEY, 0.0)),
                accountants=parse_accountants(
                    cfg.get(ACCOUNTANTS_KEY, ",".join(NODE_ACCOUNTANTS)),
                    f"node config {ACCOUNTANTS_KEY}",
                ),
                allow_no_dp=_flag(cfg.get(NO_DP_KEY, False)),
            )
        except (TypeError, ValueError) as exc:
            raise UsageError(f"node config: bad privacy policy ({exc}); restart the node") from None

    def node_config(self) -> dict[str, Any]:
        """The node config entries that differ from the defaults."""
        items: dict[str, Any] = {}
        if self.budget > 0:
            items[BUDGET_KEY] = float(self.budget)
        if self.max_delta > 0:
            items[MAX_DELTA_KEY] = float(self.max_delta)
        if self.accountants != NODE_ACCOUNTANTS:
            items[ACCOUNTANTS_KEY] = ",".join(self.accountants)
        if self.allow_no_dp:
            items[NO_DP_KEY] = True
        return items

    def budget_for(self, privacy: ClientPrivacy) -> float:
        """The cap on this node's cumulative ε in a run: the smaller of its own and the run's."""
        run = privacy.epsilon_budget
        return min(run, self.budget) if self.budget > 0 else run

    def refusal(self, client_id: str, privacy: ClientPrivacy, train_examples: int) -> str | None:
        """One line naming the client and the setting it refuses, or None to train."""
        why = f"client {client_id}: declining to train: the run's"
        if not privacy.enabled:
            if self.allow_no_dp:
                return None
            return (
                f"{why} epsilon is inf (no client DP) and this node did not opt out of DP "
                "(node start --allow-no-dp)"
            )
        if privacy.accountant not in self.accountants:
            return (
                f"{why} accountant {privacy.accountant!r} is not one this node accepts "
                f"({', '.join(self.accountants)}; node start --accountants)"
            )
        n = max(1, train_examples)
        if not privacy.delta < 1 / n:
            return (
                f"{why} delta {privacy.delta:g} is not below 1/n = {1 / n:.3g} for this node's "
                f"{n} training examples"
            )
        if self.max_delta > 0 and privacy.delta > self.max_delta:
            return (
                f"{why} delta {privacy.delta:g} is above this node's limit {self.max_delta:g} "
                "(node start --max-delta)"
            )
        if not math.isfinite(self.budget_for(privacy)):
            return f"{why} epsilon budget is inf and this node sets none (node start --budget)"
        return None


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1"):
        return True
    if str(value).lower() in ("false", "0", ""):
        return False
    raise ValueError(f"{NO_DP_KEY} {value!r} is not true or false")
