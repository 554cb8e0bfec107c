"""The audit's own accountant: ε of a history of Poisson-sampled Gaussian steps.

RDP. A report declares the Rényi orders its ε was minimised over; the audit recomputes the RDP of
the sampled Gaussian mechanism at exactly those orders (Mironov, Talwar, Zhang 2019, §3.3: the
finite binomial sum at integer orders, the two-sided series with *signed* binomial coefficients
at fractional ones) and converts with Balle et al. 2020, Theorem 21 — the bound Opacus' ``rdp``
accountant states. So an honest claim verifies exactly, and the only slack, ``RDP_REL_SLACK``
(10^-9 relative), covers floating-point rounding of the same formula summed in another order.
Any order gives a valid bound, so whatever orders a client declares, the recomputation is an upper
bound on its ε. Where the signed series cannot be evaluated stably (a partial sum would go
negative) the order falls back to the sum of absolute terms, an upper bound on the same quantity,
so numerical trouble can only raise the recomputation. (dp-accounting 0.6 sums absolute terms at
every fractional order; at σ <= 0.6 that is up to 5 % above Opacus' exact value, which is why it
is not the reference here.)

A step count composes linearly in RDP (``steps · RDP(α)``), so a history of 10^9 steps costs the
same as one step: nothing is ever sized by the step count.

PLD (for ``prv`` and ``gdp`` claims). These accountants are numerical: Opacus' PRV accountant
returns an upper estimate with an absolute ε error of 0.01, and dp-accounting's pessimistic PLD
(discretisation ``PLD_DISCRETIZATION``) is another upper estimate; two valid upper estimates of
the same ε can differ in either direction by their discretisation errors. So a numerical claim is
an under-claim only below ``pld · (1 − PLD_REL_SLACK) − PLD_ABS_SLACK`` (1 % and 0.01: the PRV
accountant's own ε error). The PLD grows with the number of compositions, so it is computed only
up to ``PLD_MAX_STEPS`` steps; beyond that a numerical claim cannot be audited.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
from scipy import special

from veilfed.errors import UsageError
from veilfed.privacy.mechanism import Segment
from veilfed.privacy.orders import check_orders

RDP_REL_SLACK = 1e-9
PLD_DISCRETIZATION = 1e-3
PLD_REL_SLACK = 0.01
PLD_ABS_SLACK = 0.01
PLD_MAX_STEPS = 200_000
_MAX_TERMS = 20_000


def _log_add(x: float, y: float) -> float:
    a, b = min(x, y), max(x, y)
    if a == -math.inf:
        return b
    return math.log1p(math.exp(a - b)) + b


def _log_sub(x: float, y: float) -> float:
    """log(e^x - e^y) for x > y, as Opacus computes it; beyond exp's range the result is x."""
    try:
        return math.log(math.expm1(x - y)) + y
    except OverflowError:
        return x


def _log_comb(n: float, k: int) -> tuple[float, float]:
    """log|C(n, k)| and its sign, for real n and integer k >= 0."""
    coef = special.binom(n, k)
    if coef == 0:
        return -math.inf, 0.0
    return math.log(abs(coef)), math.copysign(1.0, coef)


def _log_erfc(x: float) -> float:
    return math.log(2) + float(special.log_ndtr(-x * 2**0.5))


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    log_a = -math.inf
    for i in range(alpha + 1):
        log_coef = (
            special.gammaln(alpha + 1) - special.gammaln(i + 1) - special.gammaln(alpha - i + 1)
        )
        s = log_coef + i * math.log(q) + (alpha - i) * math.log1p(-q) + (i * i - i) / (2 * sigma**2)
        log_a = _log_add(log_a, float(s))
    return log_a


def _log_a_frac(q: float, sigma: float, alpha: float, signed: bool) -> float:
    """log A_α at fractional α; ``signed=False`` sums absolute terms (an upper bound)."""
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    pos = [-math.inf, -math.inf]
    neg = [-math.inf, -math.inf]
    for i in range(_MAX_TERMS):
        log_coef, sign = _log_comb(alpha, i)
        j = alpha - i
        log_t0 = log_coef + i * math.log(q) + j * math.log1p(-q)
        log_t1 = log_coef + j * math.log(q) + i * math.log1p(-q)
        log_e0 = math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma))
        log_e1 = math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma))
        log_s0 = log_t0 + (i * i - i) / (2 * sigma**2) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2 * sigma**2) + log_e1
        side = pos if sign >= 0 or not signed else neg
        side[0], side[1] = _log_add(side[0], log_s0), _log_add(side[1], log_s1)
        if max(log_s0, log_s1) < -30:
            break
    else:
        return math.inf  # not converged: this order gives no bound (it is dropped)
    total = -math.inf
    for p, n in zip(pos, neg, strict=True):
        if n == -math.inf:
            part = p
        elif p <= n:
            return math.nan  # cancellation beyond float precision: caller falls back
        else:
            part = _log_sub(p, n)
        total = _log_add(total, part)
    return total


# The audit recomputes each report's ε over the client's whole history, so every segment is asked
# for again at every later report; a cache smaller than the distinct segments of a run would be
# swept on every pass (a 512-segment prior then costs half a minute per report, not once).
@functools.lru_cache(maxsize=16384)
def sgm_rdp(q: float, sigma: float, orders: tuple[float, ...]) -> tuple[float, ...]:
    """RDP of one Poisson-sampled Gaussian step at each order (inf where unbounded)."""
    out = []
    for alpha in orders:
        if q == 1.0:
            out.append(alpha / (2 * sigma**2))
            continue
        if float(alpha).is_integer():
            log_a = _log_a_int(q, sigma, int(alpha))
        else:
            log_a = _log_a_frac(q, sigma, alpha, signed=True)
            if math.isnan(log_a):
                log_a = _log_a_frac(q, sigma, alpha, signed=False)
        out.append(log_a / (alpha - 1))
    return tuple(out)


def rdp_epsilon(history: Sequence[Segment], delta: float, orders: Sequence[float]) -> float:
    """ε at ``delta`` of ``history``, minimised over ``orders`` (Balle et al. 2020, Thm 21).

    ``orders`` must be what ``PrivacyReport.from_dict`` admits (``orders.check_orders``): an
    integer order costs α + 1 terms, so an unchecked one could stall the audit. Anything else is a
    ``UsageError``, whoever the caller.
    """
    a = np.asarray(check_orders(orders, "Rényi orders of the claim"), dtype=float)
    rdp = np.zeros_like(a)
    for sigma, q, steps in history:
        rdp = rdp + np.asarray(sgm_rdp(float(q), float(sigma), tuple(a.tolist()))) * steps
    with np.errstate(invalid="ignore", over="ignore"):
        eps = rdp - (math.log(delta) + np.log(a)) / (a - 1) + np.log((a - 1) / a)
    eps = eps[np.isfinite(eps)]
    return float(eps.min()) if eps.size else math.inf


def pld_epsilon(history: Sequence[Segment], delta: float) -> float:
    """Pessimistic PLD ε at ``delta`` (dp-accounting); UsageError beyond ``PLD_MAX_STEPS``."""
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant

    steps = sum(n for _, _, n in history)
    if steps > PLD_MAX_STEPS:
        raise UsageError(
            f"{steps} steps: a numerical (prv/gdp) claim over more than {PLD_MAX_STEPS} steps "
            "cannot be recomputed; account such runs with rdp"
        )
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    with quiet_absl():
        for sigma, q, n in history:
            acc.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), n)
        return float(acc.get_epsilon(delta))


@contextlib.contextmanager
def quiet_absl() -> Iterator[None]:
    """dp-accounting logs through absl; the CLI's stderr is reserved for the one-line verdict."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
