"""A real node's privacy policy: what it accepts from a coordinator, whatever the run says.

The run settings travel in the coordinator's message, so a node checks them against its own
policy (``veilfed node start`` options, carried in Flower's node config) before it trains:

``epsilon-budget``  (``--budget``) the most ε this node's shard spends over *every* run and round
                    it joins (its accountant is cumulative); a run's smaller budget also applies.
                    A node without one trains only in runs without client DP: the coordinator
                    never sets a node's cap;
``max-delta``       (``--max-delta``) the largest δ it accepts; always also δ < 1/n for the n
                    training examples of its shard;
``accountants``     (``--accountants``) the accountants it accepts, comma-separated: ``rdp``,
                    ``prv`` (default both); ``gdp`` is an approximation, not a bound, and never
                    accepted;
``allow-no-dp``     (``--allow-no-dp``) whether it trains in a run without client DP (ε = inf).

The node's spending is accounted at one δ, pinned with its accountant at its first DP release:
``--max-delta`` when given, else that release's δ. A run whose δ is above the pinned one is
declined (the same history reads as a smaller ε at a larger δ, so it would spend past the
budget); a run at the pinned δ or below is checked against the budget at its own δ, which is
never looser, so ε at the pinned δ stays within the budget over every run. A later
``--max-delta`` below the pin lowers the ceiling; none raises it.

A refusal is one line naming the client and the setting, sent back as a declined reply (the
coordinator logs it and the round goes on) and logged on the node. Virtual clients in a
simulation have no node policy: the run's own validated settings apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from veilfed.errors import UsageError
from veilfed.federation.keys import NODE_ACCOUNTANTS_KEY as ACCOUNTANTS_KEY
from veilfed.federation.keys import NODE_ALLOW_NO_DP as NO_DP_KEY
from veilfed.federation.keys import NODE_BUDGET as BUDGET_KEY
from veilfed.federation.keys import NODE_MAX_DELTA as MAX_DELTA_KEY
from veilfed.federation.sections import ClientPrivacy

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

    budget: float | None = None  # None: the node trains only in runs without client DP
    max_delta: float = 0.0  # 0: only δ < 1/n
    accountants: tuple[str, ...] = NODE_ACCOUNTANTS
    allow_no_dp: bool = False

    def __post_init__(self) -> None:
        if self.budget is not None and not (math.isfinite(self.budget) and self.budget > 0):
            raise UsageError(f"--budget {self.budget:g}: use a positive epsilon, e.g. --budget 8")
        if not (math.isfinite(self.max_delta) and 0 <= self.max_delta < 1):
            raise UsageError(f"--max-delta {self.max_delta:g}: use a delta in (0, 1)")
        parse_accountants(",".join(self.accountants))

    @classmethod
    def from_node_config(cls, cfg: dict[str, Any]) -> NodePolicy:
        """The policy in a node config (as ``node_config`` writes it); one-line errors."""
        try:
            return cls(
                budget=float(cfg[BUDGET_KEY]) if BUDGET_KEY in cfg else None,
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
        if self.budget is not None:
            items[BUDGET_KEY] = float(self.budget)
        if self.max_delta > 0:
            items[MAX_DELTA_KEY] = float(self.max_delta)
        if self.accountants != NODE_ACCOUNTANTS:
            items[ACCOUNTANTS_KEY] = ",".join(self.accountants)
        if self.allow_no_dp:
            items[NO_DP_KEY] = True
        return items

    def check_start(self) -> None:
        """A node that may train with DP needs its own budget; one-line error at start."""
        if self.budget is None and not self.allow_no_dp:
            raise UsageError(
                "--budget is required: the most epsilon this node's shard may spend over every "
                "run it joins (e.g. --budget 8); only a node that trains solely without DP "
                "(--allow-no-dp) may omit it"
            )

    def budget_for(self, privacy: ClientPrivacy) -> float:
        """The cap on this node's cumulative ε in a run: the smaller of its own and the run's
        (inf without a budget of its own: ``refusal`` declines every DP run then)."""
        own = math.inf if self.budget is None else self.budget
        return min(privacy.epsilon_budget, own)

    def pinned_delta(self, delta: float) -> float:
        """The δ to pin at this node's first DP release, made at ``delta``."""
        return self.max_delta if self.max_delta > 0 else delta

    def delta_refusal(self, client_id: str, delta: float, pinned: float | None) -> str | None:
        """One line when ``delta`` is above the δ the node's spending is accounted at."""
        if pinned is None or delta <= pinned:
            return None
        return (
            f"client {client_id}: declining to train: the run's delta {delta:g} is above the "
            f"delta {pinned:g} this node's spending is accounted at"
        )

    def refusal(self, client_id: str, privacy: ClientPrivacy, train_examples: int) -> str | None:
        """One line naming the client and the setting it refuses, or None to train."""
        why = f"client {client_id}: declining to train: the run's"
        if privacy.enabled and self.budget is None:
            return (
                f"{why} client DP needs this node's own epsilon budget and it has none "
                "(node start --budget EPS)"
            )
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
        return None


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1"):
        return True
    if str(value).lower() in ("false", "0", ""):
        return False
    raise ValueError(f"{NO_DP_KEY} {value!r} is not true or false")
