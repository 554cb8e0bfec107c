"""Flower strategies by name, optionally wrapped in central (client-level) DP.

The round loop (``rounds.py``) owns sampling, screening and checkpointing; a strategy here
only turns the *accepted* replies into the next global model. Aggregation rules are Flower's own
(``flwr.serverapp.strategy``); we only configure them so that they never sample or wait on their
own (sampling is done by the loop through :class:`FixedNodes`). Central DP uses Flower's
server-side clipping wrappers with their noise drawn from an OS-entropy generator made each round
(:mod:`veilfed.privacy.noise`) instead of numpy's global RNG, which a public seed would replay.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Strategy,
)
from flwr.supercore.differential_privacy import compute_stdv

from veilfed.errors import UsageError
from veilfed.federation.keys import UNIT_WEIGHT_KEY, WEIGHT_KEY
from veilfed.federation.sections import CENTRAL_DP
from veilfed.privacy.noise import gaussian, numpy_generator
from veilfed.registry import Registry

STRATEGIES: Registry[Strategy] = Registry("strategy")

# Sampling is the loop's job: a strategy sees exactly the nodes it is given, never waits.
_NO_SAMPLING: dict[str, Any] = {
    "fraction_train": 1.0,
    "fraction_evaluate": 1.0,
    "min_train_nodes": 0,
    "min_evaluate_nodes": 0,
    "min_available_nodes": 0,
}


class FixedNodes:
    """A Grid stand-in for ``configure_*``: it offers exactly the nodes the loop sampled."""

    def __init__(self, node_ids: Iterable[int]) -> None:
        self._ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._ids)


@STRATEGIES.register("fedavg")
def _fedavg(weight_key: str = WEIGHT_KEY, **_: Any) -> Strategy:
    return FedAvg(weighted_by_key=weight_key, **_NO_SAMPLING)


@STRATEGIES.register("fedprox")
def _fedprox(weight_key: str = WEIGHT_KEY, proximal_mu: float = 0.01, **_: Any) -> Strategy:
    return FedProx(weighted_by_key=weight_key, proximal_mu=proximal_mu, **_NO_SAMPLING)


@STRATEGIES.register("fedadam")
def _fedadam(
    weight_key: str = WEIGHT_KEY, server_lr: float = 0.1, server_tau: float = 1e-3, **_: Any
) -> Strategy:
    return FedAdam(weighted_by_key=weight_key, eta=server_lr, tau=server_tau, **_NO_SAMPLING)


@STRATEGIES.register("fedyogi")
def _fedyogi(
    weight_key: str = WEIGHT_KEY, server_lr: float = 0.1, server_tau: float = 1e-3, **_: Any
) -> Strategy:
    return FedYogi(weighted_by_key=weight_key, eta=server_lr, tau=server_tau, **_NO_SAMPLING)


@STRATEGIES.register("median")
def _median(weight_key: str = WEIGHT_KEY, **_: Any) -> Strategy:
    return FedMedian(weighted_by_key=weight_key, **_NO_SAMPLING)


@STRATEGIES.register("trimmed_mean")
def _trimmed(weight_key: str = WEIGHT_KEY, trim_beta: float = 0.2, **_: Any) -> Strategy:
    return FedTrimmedAvg(weighted_by_key=weight_key, beta=trim_beta, **_NO_SAMPLING)


class _UnreplayableNoise:
    """Central DP noise from a fresh OS-entropy generator per round, four-draw construction.

    Flower's server-side wrappers draw the update noise (``_add_noise_to_aggregated_arrays``) and
    the adaptive clipped-count noise (``_noisy_fraction``) from ``np.random``; both are replaced.
    The generator is never part of :func:`strategy_state`, so no checkpoint holds it.
    """

    noise_multiplier: float
    clipping_norm: float
    num_sampled_clients: int
    clipped_count_stddev: float
    _noise_rng: np.random.Generator | None = None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self._noise_rng = numpy_generator("central DP noise", (server_round,))
        try:
            return super().aggregate_train(server_round, replies)  # type: ignore[misc]
        finally:
            vars(self).pop("_noise_rng", None)

    def _rng(self) -> np.random.Generator:
        if self._noise_rng is None:
            raise RuntimeError("central DP noise is drawn only inside aggregate_train")
        return self._noise_rng

    def _add_noise_to_aggregated_arrays(self, aggregated: ArrayRecord) -> ArrayRecord:
        std = compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)
        rng = self._rng()
        noisy = {}
        for key, value in zip(aggregated.keys(), aggregated.to_numpy_ndarrays(), strict=True):
            noisy[key] = Array(np.asarray(value + gaussian(rng, std, value.shape, value.dtype)))
        return ArrayRecord(noisy)

    def _noisy_fraction(self, count: int, total: int) -> float:
        noise = float(gaussian(self._rng(), self.clipped_count_stddev, ()))
        return (count + noise) / float(total)


class CentralFixedClipping(_UnreplayableNoise, DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping with unreplayable noise."""


class CentralAdaptiveClipping(_UnreplayableNoise, DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping with unreplayable noise."""


def check_strategy(name: str, where: str = "[federated]") -> None:
    """``UsageError`` naming the valid strategies when ``name`` is not registered."""
    if name not in STRATEGIES:
        raise UsageError(
            f"{where}.strategy {name!r} is unknown; valid: " + ", ".join(STRATEGIES.names())
        )


def build_strategy(
    name: str,
    *,
    sampled_per_round: int,
    central_dp: str = "off",
    central_noise_multiplier: float = 0.0,
    central_clipping_norm: float = 1.0,
    **options: Any,
) -> Strategy:
    """The named aggregation rule, wrapped in server-side DP clipping + noise when asked.

    With central DP every client weighs the same (``unit-weight``) so that one client's
    influence on the average is bounded by ``clipping_norm / sampled``, the sensitivity the
    Gaussian noise is calibrated to.
    """
    if central_dp not in CENTRAL_DP:
        raise UsageError(f"federated.central_dp {central_dp!r}: use one of {', '.join(CENTRAL_DP)}")
    weight_key = WEIGHT_KEY if central_dp == "off" else UNIT_WEIGHT_KEY
    base = STRATEGIES.build(name, weight_key=weight_key, **options)
    if central_dp == "fixed":
        return CentralFixedClipping(
            base, central_noise_multiplier, central_clipping_norm, sampled_per_round
        )
    if central_dp == "adaptive":
        # Andrew et al.: the clipped-count noise σ_b and the update noise share the budget of
        # one Gaussian with multiplier σ (what we account); σ_b must exceed σ / 2. Flower's
        # default σ_b = sampled / 20 fails that for small cohorts.
        return CentralAdaptiveClipping(
            base,
            central_noise_multiplier,
            sampled_per_round,
            initial_clipping_norm=central_clipping_norm,
            clipped_count_stddev=max(sampled_per_round / 20, central_noise_multiplier),
        )
    return base


def _state_owner(strategy: Strategy) -> list[Strategy]:
    """The strategy and the one it wraps (DP wrappers keep the inner one in ``.strategy``)."""
    inner = getattr(strategy, "strategy", None)
    return [strategy, *_state_owner(inner)] if isinstance(inner, Strategy) else [strategy]


def _plain(value: Any) -> bool:
    if isinstance(value, np.ndarray | int | float | str | bool | type(None)):
        return True
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return False


def strategy_state(strategy: Strategy) -> list[dict[str, Any]]:
    """Everything a strategy learned across rounds (FedOpt moments, adaptive clip norm, ...).

    Only plain data attributes are kept (numbers, arrays, dicts of them); Flower records such as
    ``current_arrays`` of the DP wrappers are rebuilt by ``configure_train`` every round.
    """
    return [
        {k: v for k, v in vars(s).items() if _plain(v) and not k.startswith("__")}
        for s in _state_owner(strategy)
    ]


def load_strategy_state(strategy: Strategy, state: list[dict[str, Any]]) -> None:
    owners = _state_owner(strategy)
    if len(owners) != len(state):
        raise UsageError("checkpoint: strategy state does not match the configured strategy")
    for owner, attrs in zip(owners, state, strict=True):
        for k, v in attrs.items():
            setattr(owner, k, v)


def central_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """ε of ``releases`` Gaussian releases at σ without subsampling amplification (RDP).

    Sampling a fixed number of clients without replacement is not the Poisson sampling the
    amplification theorems assume, so we do not claim it: this bound is conservative.
    """
    if releases == 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(noise_multiplier, 1.0, releases)]
    return float(acc.get_epsilon(delta))
