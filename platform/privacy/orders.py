"""The Rényi orders an ``rdp`` claim is minimised over, and the bounds on the orders it declares.

A report declares its orders so an independent accountant recomputes the very same bound. The
bounds keep that recomputation cheap: the RDP of an integer order α sums α + 1 terms, so an
unbounded order (10^9, 10^300) in one signed report would stall the audit and the coordinator.
Opacus' default grid has 151 orders, the largest 63, and orders beyond a few hundred never give
the minimum for any σ, q and δ a DP-SGD run uses; any order set within ``MAX_ORDERS`` orders in
(1, ``MAX_ORDER``] is recomputed in well under a second.
"""

from __future__ import annotations

from typing import Any

from veilfed.errors import UsageError

MAX_ORDER = 256.0
MAX_ORDERS = 200


def rdp_orders(accountant: str) -> tuple[float, ...] | None:
    """The Rényi orders Opacus' ``rdp`` accountant minimises over; None for other accountants."""
    if accountant != "rdp":
        return None
    from opacus.accountants.rdp import RDPAccountant

    return tuple(float(a) for a in RDPAccountant.DEFAULT_ALPHAS)


def check_orders(value: Any, where: str) -> tuple[float, ...]:
    """1 to ``MAX_ORDERS`` numbers, each in (1, ``MAX_ORDER``]; a one-line ``UsageError`` else."""
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= MAX_ORDERS:
        raise UsageError(f"{where}: field 'orders' must be a list of 1 to {MAX_ORDERS} numbers")
    out = []
    for a in value:
        if isinstance(a, bool) or not isinstance(a, int | float) or not 1 < a <= MAX_ORDER:
            raise UsageError(
                f"{where}: field 'orders' holds {a!r}; each order must be in (1, {MAX_ORDER:g}]"
            )
        out.append(float(a))
    return tuple(out)
