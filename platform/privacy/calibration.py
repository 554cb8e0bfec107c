"""σ for a target (ε, δ) over every planned DP-SGD step: the one calibration ``veilfed train`` and
every client use.

The caller passes the steps of the *whole* training (a client: its steps per round × the planned
rounds), so the cumulative ε stays within the target however many of them are taken. Calibrations
and Opacus' per-order RDP terms are memoised: both are pure functions of their arguments, and the
clients of a run (long-lived Ray actors, a real node's rounds) ask for the same ones.
"""

from __future__ import annotations

import functools

from opacus.accountants.analysis import rdp

from veilfed.errors import UsageError
from veilfed.privacy.accounting import calibrate_noise


def memoize_rdp() -> None:
    """Cache Opacus' per-order RDP of the sampled Gaussian, a pure function of (q, σ, α).

    ε is queried several times per client round (budget check, report) and each query costs ~1 s
    of pure-Python series evaluation at fractional orders; clients of a run share (q, σ), so a
    long-lived process computes them once. Results are unchanged (the same function).
    """
    if not hasattr(rdp._compute_rdp, "cache_info"):
        rdp._compute_rdp = functools.lru_cache(maxsize=65536)(rdp._compute_rdp)


@functools.lru_cache(maxsize=64)
def _calibrated(epsilon: float, delta: float, rate: float, steps: int, accountant: str) -> float:
    return calibrate_noise(epsilon, delta, rate, steps, accountant=accountant)


def noise_for(
    given: float | None,
    epsilon: float | None,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str,
) -> float:
    """σ: ``given`` when set (> 0), else the smallest σ keeping ``steps`` Poisson steps at
    ``sample_rate`` within (``epsilon``, ``delta``) under ``accountant``."""
    if given:
        return float(given)
    if epsilon is None:
        raise UsageError("privacy: give noise_multiplier or epsilon")
    memoize_rdp()
    return _calibrated(float(epsilon), delta, sample_rate, steps, accountant)
