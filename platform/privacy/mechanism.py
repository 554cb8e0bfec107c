"""The mechanism every accountant counts: segments of Poisson-sampled Gaussian DP-SGD steps.

A history is a list of ``(noise_multiplier, sample_rate, steps)`` segments in the order they were
spent, the plain data Opacus' accountants keep. Invariants of a segment: σ is a finite number
> 0, q is in (0, 1], steps is an integer >= 0. Two consecutive segments with the same (σ, q) are
one segment (:func:`merge`): every accountant gives them the same ε, and fewer segments compose
faster.
"""

from __future__ import annotations

import math
from typing import Any

from veilfed.errors import UsageError

MECHANISMS = ("rdp", "prv", "gdp")
Segment = tuple[float, float, int]


def check_mechanism(params: tuple[float, float, int], where: str) -> Segment:
    """Validate one ``(noise_multiplier, sample_rate, steps)`` segment; ``where`` names it."""
    sigma, rate, steps = params
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not sigma > 0:
        raise UsageError(f"{where}: noise_multiplier must be > 0 (got {sigma!r})")
    if not math.isfinite(sigma):
        raise UsageError(f"{where}: noise_multiplier must be finite (got {sigma!r})")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1:
        raise UsageError(f"{where}: sample_rate must be in (0, 1] (got {rate!r})")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise UsageError(f"{where}: steps must be an integer >= 0 (got {steps!r})")
    return float(sigma), float(rate), steps


def check_segment(value: Any, where: str) -> Segment:
    """A segment read from JSON: a 3-item list checked by :func:`check_mechanism`."""
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise UsageError(f"{where} must be [noise_multiplier, rate, steps]")
    return check_mechanism(tuple(value), where)


def merge(history: list[Segment], seg: Segment) -> list[Segment]:
    """``history`` with ``seg`` appended, merged into the last segment when (σ, q) are equal."""
    if history and history[-1][:2] == seg[:2]:
        return [*history[:-1], (seg[0], seg[1], history[-1][2] + seg[2])]
    return [*history, seg]
