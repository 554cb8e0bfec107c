"""Wiring a client's persisted accountant into Opacus' DP-SGD: plan a round, calibrate σ, attach.

How the client trainer uses it with Opacus 1.6
----------------------------------------------
``PrivacyEngine.__init__`` creates a fresh accountant (``self.accountant``) and ``make_private``
attaches ``self.accountant``'s optimizer hook to the DPOptimizer *at the time of the call*; each
``optimizer.step()`` then records one step with ``sample_rate = 1 / len(dp_data_loader)`` and the
optimizer's noise multiplier. So swap the accountant in before ``make_private``::

    store = AccountantStore(node_dir / "accountants")                  # accountant_store.py
    acc = store.load(client_id, mechanism="rdp")
    plan = plan_round(len(dataset), batch_size, local_epochs)
    sigma = noise_multiplier or calibrate_noise(eps, delta, plan.sample_rate, plan.steps * rounds)
    reason = acc.refusal(budget, delta, sigma, plan.sample_rate, plan.steps)
    if reason:                       # decline the round, tell the coordinator why
        ...
    engine = PrivacyEngine(accountant=acc.mechanism)
    attach(engine, acc)              # engine.accountant is acc.opacus from here on
    model, opt, loader = engine.make_private(module=..., optimizer=..., data_loader=...,
                                             noise_multiplier=sigma, max_grad_norm=C,
                                             poisson_sampling=True)
    ... train ...                    # every opt.step() lands in acc's history
    report = record_round(acc, run_id=..., round=r, model_digest=..., max_grad_norm=C,
                          delta=delta)                               # report_chain.py
    store.save(acc)

Do not use ``make_private_with_epsilon``: it calibrates σ for this round's epochs only, ignoring
the rounds already spent and those still planned; use :func:`calibrate_noise` with the steps of
all planned rounds instead. A trainer that does not use ``PrivacyEngine`` records its steps with
``acc.step(sigma, sample_rate, steps)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from veilfed.errors import UsageError
from veilfed.privacy.accountant import ClientAccountant
from veilfed.privacy.mechanism import MECHANISMS, check_mechanism


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    epsilon_tolerance: float = 0.01,
) -> float:
    """Smallest σ (within Opacus' binary search) keeping ``steps`` steps at q within (ε, δ).

    Pass the steps of *all* planned rounds so the cumulative ε stays within the target.
    """
    from opacus.accountants.utils import get_noise_multiplier

    if accountant not in MECHANISMS:
        raise UsageError(f"accountant {accountant!r}: use one of {', '.join(MECHANISMS)}")
    if not target_epsilon > 0 or not 0 < delta < 1:
        raise UsageError(
            f"target epsilon must be > 0 and delta in (0, 1) (got {target_epsilon!r}, {delta!r})"
        )
    check_mechanism((1.0, sample_rate, steps), "calibrate_noise")
    if steps == 0:
        raise UsageError("calibrate_noise: steps must be >= 1")
    try:
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=epsilon_tolerance,
            )
        )
    except ValueError as exc:
        raise UsageError(
            f"cannot reach epsilon={target_epsilon:g} at delta={delta:g} with sample_rate="
            f"{sample_rate:g} over {steps} steps ({exc}); raise epsilon or lower rounds/epochs"
        ) from None


@dataclass(frozen=True)
class RoundPlan:
    """Opacus' Poisson schedule for one round: q = 1 / batches per epoch, steps = epochs / q."""

    sample_rate: float
    steps_per_epoch: int
    steps: int


def plan_round(dataset_size: int, batch_size: int, local_epochs: int) -> RoundPlan:
    """Expected steps of one local round, exactly as ``make_private`` will account them.

    Opacus sets ``sample_rate = 1 / len(data_loader)`` (``ceil(n / batch)`` batches, no
    drop_last) and the Poisson loader yields ``1 / sample_rate`` batches per epoch.
    """
    for name, value in (("dataset_size", dataset_size), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"plan_round: {name} must be a positive integer (got {value!r})")
    if isinstance(local_epochs, bool) or not isinstance(local_epochs, int) or local_epochs < 1:
        raise UsageError(
            f"plan_round: local_epochs must be a positive integer (got {local_epochs!r})"
        )
    per_epoch = math.ceil(dataset_size / batch_size)
    return RoundPlan(
        sample_rate=1 / per_epoch, steps_per_epoch=per_epoch, steps=per_epoch * local_epochs
    )


def attach(privacy_engine: Any, acc: ClientAccountant) -> None:
    """Make ``privacy_engine`` record into ``acc``; call before ``make_private``.

    ``make_private`` hooks whatever ``privacy_engine.accountant`` is at call time, so the
    persisted history keeps growing instead of restarting at zero every round.
    """
    if not hasattr(privacy_engine, "accountant"):
        raise UsageError("attach: expected an opacus.PrivacyEngine")
    privacy_engine.accountant = acc.opacus
