"""One-run canary audit: the bound separates no-DP from DP and catches a pipeline without noise."""

from __future__ import annotations

import math

import pytest
import torch

from veilfed.errors import UsageError
from veilfed.privacy.canary import (
    CanarySettings,
    DPSettings,
    count_correct,
    epsilon_lower_bound,
    p_value,
    run_canary_audit,
)

SMALL = CanarySettings(canaries=300, guesses=60, dim=600, epochs=10)


def test_lower_bound_math() -> None:
    # All r guesses right with δ = 0: ε_lb solves (e^ε / (1 + e^ε))^r = 1 − confidence.
    q = 0.05 ** (1 / 100)
    assert epsilon_lower_bound(1000, 100, 100, 0.0, 0.95) == pytest.approx(
        math.log(q / (1 - q)), rel=1e-6
    )
    assert epsilon_lower_bound(1000, 100, 50, 1e-5, 0.95) == 0.0  # chance level proves nothing
    assert p_value(1000, 100, 80, 0.5, 1e-5) < p_value(1000, 100, 80, 2.0, 1e-5)
    assert p_value(1000, 100, 80, 2.0, 0.1) == 1.0  # a large δ makes any outcome plausible
    with pytest.raises(UsageError, match="guesses"):
        epsilon_lower_bound(10, 20, 5, 1e-5, 0.95)


def test_count_correct() -> None:
    scores = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    included = torch.tensor([True, False, True, False, False, True])
    assert count_correct(scores, included, 4) == 1 + 1  # in: {5, 4} -> 1; out: {1, 0} -> 1


@pytest.mark.integration
def test_without_dp_the_bound_is_far_above_chance() -> None:
    result = run_canary_audit(SMALL, DPSettings(enabled=False))
    assert result.epsilon_lower > 0.5 and result.ok and math.isinf(result.epsilon_claimed)
    assert result.to_dict()["epsilon_claimed"] is None


@pytest.mark.integration
def test_with_strong_dp_the_bound_stays_below_the_claim() -> None:
    result = run_canary_audit(SMALL, DPSettings(noise_multiplier=3.0))
    assert result.ok and result.epsilon_lower < min(1.0, result.epsilon_claimed)
    assert result.steps == 10 * round(1 / result.sample_rate)


def test_pipeline_that_drops_the_noise_is_caught(monkeypatch) -> None:
    import opacus.optimizers.optimizer as dp_optimizer

    monkeypatch.setattr(
        dp_optimizer, "_generate_noise", lambda std, reference, *a, **k: torch.zeros_like(reference)
    )
    result = run_canary_audit(SMALL, DPSettings(noise_multiplier=30.0))
    assert not result.ok
    assert result.epsilon_lower > 0.5 > result.epsilon_claimed


def test_settings_are_type_checked() -> None:
    assert CanarySettings.from_dict({"lr": 2, "canaries": 10, "guesses": 4}).lr == 2.0
    with pytest.raises(UsageError, match="canary.canaries: expected int"):
        CanarySettings.from_dict({"canaries": 1.5})
    with pytest.raises(UsageError, match="canary: unknown field 'm'"):
        CanarySettings.from_dict({"m": 3})
    with pytest.raises(UsageError, match="canary.guesses: must be even"):
        CanarySettings.from_dict({"canaries": 10, "guesses": 3})
