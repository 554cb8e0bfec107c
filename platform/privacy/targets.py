"""What a DP target may be, checked the same way for a config's ``[privacy]`` and a run's client DP.

ε > 0 (``inf``: no DP) and δ in (0, 1); and δ < 1/n for a dataset of n examples, since at
δ ≥ 1/n releasing one example whole satisfies (ε, δ)-DP.
"""

from __future__ import annotations

from veilfed.errors import UsageError


def check_dp_target(epsilon: float | None, delta: float, where: str = "privacy") -> None:
    """A DP target is meaningful only with ε > 0 (``inf``: no DP) and δ in (0, 1)."""
    if epsilon is not None and not epsilon > 0:
        raise UsageError(f"{where}.epsilon: must be > 0 (got {epsilon:g})")
    if not 0 < delta < 1:
        raise UsageError(f"{where}.delta: must be in (0, 1) (got {delta:g})")


def check_delta_for(delta: float, n: int, where: str = "privacy", what: str = "") -> None:
    """δ < 1/n for a dataset of ``n`` examples (``what`` says which n, in the error)."""
    if n < 1 or delta >= 1 / n:
        raise UsageError(
            f"{where}.delta {delta:g} must be < 1/n = {1 / max(n, 1):.3g} (n = {n}"
            f"{', ' + what if what else ''}); lower delta"
        )
