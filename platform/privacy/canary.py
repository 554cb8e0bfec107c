"""Empirical ε lower bound from one training run (Steinke, Nasr & Jagielski, NeurIPS 2023).

Accounting proves an *upper* bound on ε; this audit measures a *lower* bound, so a DP-SGD
pipeline that leaks more than it accounts for (missing clipping, noise not applied, wrong sample
rate) is caught. ``m`` canaries (random points with random labels) are each included in the
training set independently with probability 1/2; after one DP-SGD run the auditor guesses the
``r/2`` highest-scoring canaries (score = −loss) as "in" and the ``r/2`` lowest as "out". Under
(ε, δ)-DP the number of correct guesses is dominated by Binomial(r, e^ε / (1 + e^ε)) plus a δ
term (the paper's Theorem 5.2 / Algorithm 2); the largest ε rejected at the chosen confidence is
the lower bound. It must not exceed the accountant's ε for the same run.

The training is a workbench — a linear classifier on synthetic features in which canaries are
easy to memorise — trained with the same Opacus DP-SGD path, OS-entropy noise and sampling
(``noise.protect``) and persisted accountant the clients use (``accounting.attach``), at the
experiment's ``[privacy]`` settings (σ, or (ε, δ) calibrated over the workbench's steps; clipping
norm; accountant). It audits the DP mechanism, not the multimodal model: a one-run bound on a
large model is far below its ε and proves little.

Config: the experiment TOML's ``[privacy]`` section plus an optional ``[canary]`` section
(fields of :class:`CanarySettings`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from veilfed.errors import UsageError
from veilfed.tables import typed_fields


@dataclass(frozen=True)
class CanarySettings:
    """The ``[canary]`` section: workbench size and the auditor's guesses."""

    canaries: int = 1000  # m
    guesses: int = 200  # r, half guessed "in" and half "out"; fixed before training
    dim: int = 2000  # feature dimension of the linear workbench
    base_size: int = 50  # non-canary training points (labels from a fixed linear teacher)
    epochs: int = 20
    batch_size: int = 100
    lr: float = 5.0
    confidence: float = 0.95
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "canary") -> CanarySettings:
        """Type-checked and validated settings; errors name ``where.field``."""
        settings = cls(**typed_fields(cls, data, where))
        settings.validate(where)
        return settings

    def validate(self, where: str) -> None:
        for name in ("canaries", "guesses", "dim", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{where}.{name}: must be >= 1")
        if self.base_size < 0:
            raise UsageError(f"{where}.base_size: must be >= 0")
        if self.guesses % 2 or self.guesses > self.canaries:
            raise UsageError(f"{where}.guesses: must be even and <= canaries ({self.canaries})")
        if not self.lr > 0:
            raise UsageError(f"{where}.lr: must be > 0")
        if not 0 < self.confidence < 1:
            raise UsageError(f"{where}.confidence: must be in (0, 1)")


@dataclass(frozen=True)
class DPSettings:
    """DP-SGD settings taken from the experiment's ``[privacy]`` section."""

    enabled: bool = True
    noise_multiplier: float | None = None
    epsilon: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "rdp"


@dataclass(frozen=True)
class CanaryResult:
    canaries: int
    included: int
    guesses: int
    correct: int
    confidence: float
    delta: float
    epsilon_lower: float
    epsilon_claimed: float  # inf when trained without DP
    noise_multiplier: float
    sample_rate: float
    steps: int

    @property
    def ok(self) -> bool:
        return self.epsilon_lower <= self.epsilon_claimed

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if math.isinf(self.epsilon_claimed):
            data["epsilon_claimed"] = None  # JSON has no infinity: no DP, no claim
        return data | {"ok": self.ok}


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[≥ v of r guesses correct] under (ε, δ)-DP (upper bound; Algorithm 2 of the paper)."""
    from scipy import stats

    q = 1 / (1 + math.exp(-epsilon))
    beta = float(stats.binom.sf(v - 1, r, q))
    alpha = total = 0.0
    for i in range(1, v + 1):
        total += float(stats.binom.pmf(v - i, r, q))
        alpha = max(alpha, total / i)
    return min(beta + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float) -> float:
    """Largest ε whose p-value for ``v`` correct of ``r`` guesses is below 1 − confidence."""
    if not 0 <= v <= r <= m:
        raise UsageError(f"canary audit: need 0 <= correct ({v}) <= guesses ({r}) <= m ({m})")
    p = 1 - confidence
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < p:
        hi += 1
    for _ in range(30):
        mid = (lo + hi) / 2
        if p_value(m, r, v, mid, delta) < p:
            lo = mid
        else:
            hi = mid
    return lo


def count_correct(scores: Any, included: Any, guesses: int) -> int:
    """Correct guesses when the top ``guesses/2`` scores are called "in", the bottom "out"."""
    import torch

    order = torch.argsort(torch.as_tensor(scores), descending=True)
    half = guesses // 2
    inc = torch.as_tensor(included, dtype=torch.bool)
    return int(inc[order[:half]].sum()) + int((~inc[order[len(order) - half :]]).sum())


def run_canary_audit(settings: CanarySettings, dp: DPSettings) -> CanaryResult:
    """Train the workbench once with DP-SGD and compare the measured bound with the claim."""
    import torch
    from opacus import PrivacyEngine

    from veilfed.privacy.accountant import ClientAccountant
    from veilfed.privacy.accounting import attach, calibrate_noise, plan_round
    from veilfed.privacy.noise import protect

    s = settings
    gen = torch.Generator().manual_seed(s.seed)
    torch.manual_seed(s.seed)
    scale = 1 / math.sqrt(s.dim)
    teacher = torch.randn(s.dim, generator=gen)
    base_x = torch.randn(s.base_size, s.dim, generator=gen) * scale
    base_y = (base_x @ teacher > 0).long()
    canary_x = torch.randn(s.canaries, s.dim, generator=gen) * scale
    canary_y = torch.randint(0, 2, (s.canaries,), generator=gen)
    included = torch.rand(s.canaries, generator=gen) < 0.5
    train = torch.utils.data.TensorDataset(
        torch.cat([base_x, canary_x[included]]), torch.cat([base_y, canary_y[included]])
    )
    loader = torch.utils.data.DataLoader(train, batch_size=s.batch_size)
    model = torch.nn.Linear(s.dim, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=s.lr)
    plan = plan_round(len(train), s.batch_size, s.epochs)
    acc = ClientAccountant("canary", dp.accountant)
    sigma = 0.0
    with warnings.catch_warnings():
        # Opacus' backward-hook chatter is irrelevant to the audit (its secure-RNG notice is not).
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        if dp.enabled:
            sigma = dp.noise_multiplier or calibrate_noise(
                dp.epsilon or 0.0, dp.delta, plan.sample_rate, plan.steps, dp.accountant
            )
            engine = PrivacyEngine(accountant=dp.accountant)
            attach(engine, acc)
            model, optimizer, loader = engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=sigma,
                max_grad_norm=dp.max_grad_norm,
                poisson_sampling=True,
            )
            protect(optimizer, loader)  # the noise and sampling the clients use
        for _ in range(s.epochs):
            for x, y in loader:
                if len(x) == 0:
                    continue
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
    with torch.no_grad():
        scores = -torch.nn.functional.cross_entropy(model(canary_x), canary_y, reduction="none")
    correct = count_correct(scores, included, s.guesses)
    return CanaryResult(
        canaries=s.canaries,
        included=int(included.sum()),
        guesses=s.guesses,
        correct=correct,
        confidence=s.confidence,
        delta=dp.delta,
        epsilon_lower=epsilon_lower_bound(s.canaries, s.guesses, correct, dp.delta, s.confidence),
        epsilon_claimed=acc.epsilon(dp.delta) if dp.enabled else math.inf,
        noise_multiplier=sigma,
        sample_rate=plan.sample_rate,
        steps=acc.total_steps if dp.enabled else plan.steps,
    )


def load_canary_config(path: str | Path) -> tuple[CanarySettings, DPSettings]:
    """The ``[canary]`` and ``[privacy]`` sections of an experiment TOML (both typed and
    validated by ``veilfed.config.load_config``)."""
    from veilfed.config import load_config  # config imports CanarySettings from here

    cfg = load_config(path)
    p = cfg.privacy
    dp = DPSettings(
        enabled=p.enabled,
        noise_multiplier=p.noise_multiplier,
        epsilon=p.epsilon,
        delta=p.delta,
        max_grad_norm=p.max_grad_norm,
        accountant=p.accountant,
    )
    return cfg.canary, dp
