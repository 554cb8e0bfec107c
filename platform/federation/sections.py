"""The config sections a federated run is typed by: ``[federated]``, client DP and ``[he]``.

Each is a frozen dataclass built by ``from_dict`` from a TOML table (``veilfed.config.load_config``
types ``[federated]`` and ``[he]`` with it) or from JSON (``RunSettings.from_json``): fields are
coerced by :mod:`veilfed.tables`, so an unknown field, a wrong type or a value out of range is a
one-line ``UsageError`` naming the field. Client DP's ε/δ checks are the config's own
(:mod:`veilfed.privacy.targets`). Defaults are the values a config that omits the field runs
with, and they are part of the contract (``docs/contracts.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from veilfed.errors import UsageError
from veilfed.privacy.mechanism import MECHANISMS
from veilfed.privacy.targets import check_delta_for, check_dp_target
from veilfed.tables import typed_fields

CENTRAL_DP = ("off", "fixed", "adaptive")  # client-level DP at the coordinator
# What a train reply carries (veilfed.federation.update_codec)
UPDATE_COMPRESSIONS = ("none", "topk", "randk", "int8_update")


@dataclass(frozen=True)
class FederatedConfig:
    """``[federated]``: who trains, how updates are combined, and fault injection."""

    clients: int = 8
    rounds: int = 3
    fraction: float = 0.5  # of all clients, sampled per round for training
    fraction_evaluate: float = 1.0  # of all clients, evaluating the global model per round
    min_fit_clients: int = 1  # fewer accepted updates than this: round keeps the old model
    strategy: str = "fedavg"  # fedavg | fedprox | fedadam | fedyogi | median | trimmed_mean
    proximal_mu: float = 0.01
    server_lr: float = 0.1
    server_tau: float = 1e-3
    trim_beta: float = 0.2
    norm_bound: float = 0.0  # > 0: reject updates that move the model further (L2)
    local_epochs: int = 1
    partition: str = "iid"  # iid | dirichlet | quantity
    alpha: float = 0.5
    missing_audio: float = 0.0  # fraction of clients without audio (missing-modality skew)
    missing_text: float = 0.0  # fraction of clients without text
    holdout: float = 0.25  # share of each client's shard kept for federated evaluation
    failure_rate: float = 0.0  # probability a sampled client crashes (fault-injection tests)
    round_timeout_s: float = 900.0
    cpus_per_client: float = 1.0
    gpus_per_client: float = 0.0  # Ray's GPU share per virtual client; 0: clients on the CPU
    central_dp: str = "off"  # off | fixed | adaptive (client-level DP at the coordinator)
    central_noise_multiplier: float = 1.0
    central_clipping_norm: float = 1.0
    sign_reports: bool = True  # clients sign privacy reports; coordinator verifies them
    budget: float = 0.0  # per-client ε budget; 0: the target ε ([privacy].epsilon / --epsilon)
    # Decoded samples a client process keeps in memory across rounds (veilfed.clients.sample_cache)
    client_cache_mb: int = 1024  # 0: decode every round
    # What a client sends (veilfed.federation.update_codec): none (whole weights) | topk | randk
    # (update_fraction of the coordinates, error feedback) | int8_update (update_scale; 0: a
    # scale per tensor)
    update_compression: str = "none"
    update_fraction: float = 0.1
    update_scale: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "[federated]") -> FederatedConfig:
        cfg = cls(**typed_fields(cls, data, where))
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "[federated]") -> None:
        """Ranges of every field; the strategy name is the coordinator's to check."""
        if self.clients < 1:
            raise UsageError(f"{where}.clients must be >= 1 (got {self.clients})")
        if self.rounds < 1:
            raise UsageError(f"{where}.rounds must be >= 1 (got {self.rounds})")
        for name in ("fraction", "fraction_evaluate"):
            value = getattr(self, name)
            if not (0 < value <= 1):
                raise UsageError(f"{where}.{name} must be in (0, 1] (got {value})")
        if not self.strategy:
            raise UsageError(f"{where}.strategy must name an aggregation rule")
        if self.central_dp not in CENTRAL_DP:
            raise UsageError(
                f"{where}.central_dp {self.central_dp!r}: use one of {', '.join(CENTRAL_DP)}"
            )
        if not 1 <= self.min_fit_clients <= self.sampled_per_round:
            raise UsageError(
                f"{where}.min_fit_clients must be in [1, {self.sampled_per_round}] "
                f"(the clients sampled per round), got {self.min_fit_clients}"
            )
        if not 0 <= self.failure_rate < 1:
            raise UsageError(f"{where}.failure_rate must be in [0, 1) (got {self.failure_rate})")
        if not 0 < self.holdout < 1:
            raise UsageError(f"{where}.holdout must be in (0, 1) (got {self.holdout})")
        if self.local_epochs < 1:
            raise UsageError(f"{where}.local_epochs must be >= 1 (got {self.local_epochs})")
        if not 0 <= self.trim_beta < 0.5:
            raise UsageError(f"{where}.trim_beta must be in [0, 0.5) (got {self.trim_beta})")
        if self.client_cache_mb < 0:
            raise UsageError(
                f"{where}.client_cache_mb must be >= 0, 0 = no cache (got {self.client_cache_mb})"
            )
        if self.update_compression not in UPDATE_COMPRESSIONS:
            raise UsageError(
                f"{where}.update_compression {self.update_compression!r}: use one of "
                f"{', '.join(UPDATE_COMPRESSIONS)}"
            )
        if not 0 < self.update_fraction <= 1:
            raise UsageError(
                f"{where}.update_fraction must be in (0, 1] (got {self.update_fraction})"
            )
        if not (math.isfinite(self.update_scale) and self.update_scale >= 0):
            raise UsageError(
                f"{where}.update_scale must be >= 0, 0 = a scale per tensor "
                f"(got {self.update_scale})"
            )
        if (
            min(self.norm_bound, self.budget, self.gpus_per_client) < 0
            or min(self.cpus_per_client, self.round_timeout_s) <= 0
        ):
            raise UsageError(
                f"{where}: norm_bound, budget and gpus_per_client must be >= 0, "
                "cpus_per_client and round_timeout_s > 0"
            )

    @property
    def sampled_per_round(self) -> int:
        return max(1, min(self.clients, round(self.fraction * self.clients)))

    @property
    def evaluated_per_round(self) -> int:
        return max(1, min(self.clients, round(self.fraction_evaluate * self.clients)))


@dataclass(frozen=True)
class ClientPrivacy:
    """Client-side DP-SGD: σ from ``epsilon`` over all planned rounds, or ``noise_multiplier``."""

    epsilon: float = 8.0  # math.inf: no DP (non-private baseline)
    delta: float = 1e-5
    noise_multiplier: float = 0.0  # > 0: use as given instead of calibrating from epsilon
    max_grad_norm: float = 1.0
    budget: float = 0.0  # per-client ε budget; 0: the target epsilon
    accountant: str = "rdp"

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0 or math.isfinite(self.epsilon)

    @property
    def epsilon_budget(self) -> float:
        return self.budget if self.budget > 0 else self.epsilon

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "privacy") -> ClientPrivacy:
        """Typed construction from JSON (numbers as numbers, ``accountant`` a string)."""
        return cls(**typed_fields(cls, data, where))

    def validate(self, num_examples_min: int, where: str = "privacy") -> None:
        """Ranges of every field; ``num_examples_min``: the smallest client's n (δ < 1/n)."""
        check_dp_target(self.epsilon, self.delta, where)
        if self.accountant not in MECHANISMS:
            raise UsageError(
                f"{where}.accountant {self.accountant!r}: use one of {', '.join(MECHANISMS)}"
            )
        finite = (self.noise_multiplier, self.max_grad_norm, self.budget)
        if not all(math.isfinite(v) for v in finite):
            raise UsageError(f"{where}: noise_multiplier, max_grad_norm and budget must be finite")
        if self.enabled:
            check_delta_for(
                self.delta, num_examples_min, where, "the smallest client's training examples"
            )
        if self.noise_multiplier < 0 or self.max_grad_norm <= 0 or self.budget < 0:
            raise UsageError(
                f"{where}: noise_multiplier and budget must be >= 0, max_grad_norm > 0"
            )


HE_STRATEGIES = ("fedavg", "fedprox")  # aggregation is a weighted sum: nothing else is possible


@dataclass(frozen=True)
class HEConfig:
    """``[he]``: CKKS secure aggregation (docs/he.md). Paths are filled in by the run setup.

    ``max_abs_update`` bounds every *weight* a client encrypts (clients send their full new
    weights × n_k, not deltas, see docs/federated.md), so it is larger than the library's
    delta-sized default. ``shadow`` (test runs only) makes clients also send their plaintext
    weights so the coordinator can hand evaluating clients the plaintext FedAvg to compare with.
    ``min_contributors`` is the floor of distinct clients an aggregate must sum: the coordinator
    keeps the previous model below it, and virtual clients refuse to decrypt below it (a real
    node applies its own ``--he-min-contributors`` instead).
    """

    enabled: bool = False
    shadow: bool = False
    min_contributors: int = 3
    max_abs_update: float = 16.0
    max_total_weight: int = 2**16
    tolerance: float = 1e-5
    secret_path: str = ""  # clients only (in simulation: <run_dir>/he/secret.ctx)
    public_path: str = ""  # the coordinator's context

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "[he]") -> HEConfig:
        """``[he]`` as a config gives it: the context paths are the run setup's to fill in."""
        paths = [k for k in ("secret_path", "public_path") if isinstance(data, dict) and k in data]
        if paths:
            raise UsageError(
                f"{where}: unknown field {paths[0]!r}; the run setup sets the context paths"
            )
        return cls(**typed_fields(cls, data, where))

    def check_compatible(self, fed: FederatedConfig, where: str) -> None:
        """Server-side rules that need plaintext updates cannot run on ciphertexts."""
        if not self.enabled:
            return
        if self.min_contributors < 1:
            raise UsageError(f"{where}: [he] min_contributors must be >= 1")
        if fed.sampled_per_round < self.min_contributors:
            raise UsageError(
                f"{where}: {fed.sampled_per_round} clients sampled per round cannot reach [he] "
                f"min_contributors = {self.min_contributors} (clients refuse to decrypt smaller "
                "aggregates); sample more clients (fraction, clients)"
            )
        if fed.strategy not in HE_STRATEGIES:
            raise UsageError(
                f"{where}: strategy {fed.strategy!r} needs plaintext updates and is incompatible "
                f"with HE; use {' or '.join(HE_STRATEGIES)} or turn HE off"
            )
        if fed.update_compression != "none":
            raise UsageError(
                f"{where}: update_compression {fed.update_compression!r} sends plaintext deltas "
                "and is incompatible with HE (the coordinator sums ciphertexts of whole "
                'weights); set update_compression = "none" or turn HE off'
            )
        if fed.central_dp != "off":
            raise UsageError(
                f"{where}: central_dp {fed.central_dp!r} clips and noises plaintext updates at the "
                'coordinator and is incompatible with HE; set central_dp = "off" or turn HE off'
            )
