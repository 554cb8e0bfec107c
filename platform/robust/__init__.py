"""Adversarial robustness: L∞ attacks on model inputs, robust evaluation, adversarial training.

Public API (docs/robustness.md)::

    attack = Attack(eps=4 / 255, method="pgd", steps=10, modalities=("video",))
    adv = perturb(model, batch, attack, ["action"], generator)   # batch with attacked inputs
    robust = score(model, Attacked(model, loader, attack, ["action"], seed=0), baselines)
    report = robustness_report(model, loader, baselines, ["action"], attack)  # clean + robust
    batch = AdversarialTraining(model, settings)(batch)  # [train] adversarial, DP-safe

One attack (:mod:`veilfed.robust.attack`: PGD, FGSM as its one-step case) serves evaluation
(:mod:`veilfed.robust.evaluation`, ``veilfed evaluate``) and training
(:mod:`veilfed.robust.training`, ``[train] adversarial``; settings in
:mod:`veilfed.robust.settings`).
"""

from __future__ import annotations

import importlib
from typing import Any

# Names resolve on first use (PEP 562): ``veilfed.config`` imports ``veilfed.robust.settings``
# on every command's start, and must not pull in the model and metrics with it.
_WHERE = {
    "ATTACKABLE_KINDS": "attack",
    "ATTACKS": "attack",
    "RANGES": "attack",
    "Attack": "attack",
    "attack_modalities": "attack",
    "attackable": "attack",
    "perturb": "attack",
    "choose_tasks": "evaluation",
    "plan_attack": "evaluation",
    "robustness_report": "evaluation",
    "Attacked": "loader",
    "AdversarialTraining": "training",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'veilfed.robust' has no attribute {name!r}")
    return getattr(importlib.import_module(f"veilfed.robust.{_WHERE[name]}"), name)
