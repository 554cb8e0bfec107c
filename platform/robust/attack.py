"""L∞ projected gradient descent on the model's batch dict: PGD, and FGSM as its one-step case.

:func:`perturb` maximises the summed loss of the chosen tasks (``model.loss(outputs, batch)``'s
per-task losses) over additive perturbations ``δ_m`` of the chosen input modalities ``m`` (see
:data:`RANGES`), each within its own L∞ ball ``‖δ_m‖∞ ≤ eps`` and with ``x_m + δ_m`` inside the
modality's valid range. One iteration is ``δ ← Π(δ + α · sign(∇_δ loss))``, ``Π`` clamping
``δ`` to ``[-eps, eps]`` and then ``x + δ`` to the range. Contract:

* PGD starts from a uniform draw in the ball (from the caller's ``torch.Generator``, so the
  result is a function of its seed) and takes ``steps`` steps of ``α = 2.5 · eps / steps``
  unless a step size is given (Madry et al. 2018: enough to cross the ball from any start).
  FGSM is one step of ``α = eps`` from ``δ = 0`` and draws nothing.
* The model runs in eval mode (restored afterwards); gradients come from
  ``torch.autograd.grad`` with respect to the perturbations only, so no parameter's ``.grad``
  (nor an Opacus ``grad_sample``, see :mod:`veilfed.robust.training`) is touched, and grad mode
  is enabled inside even when the caller runs under ``torch.no_grad`` (evaluation does).
* A sample whose modality is absent (``modality_mask`` False) is left unperturbed there: the
  model never reads it, so a change would alter the stored input and nothing else.
* ``eps = 0`` returns the inputs unchanged; the returned batch is a shallow copy of ``batch``
  with only the attacked modalities replaced (detached tensors, same device and dtype).

Only tasks of :data:`ATTACKABLE_KINDS` are attacked: their losses are the classification
objectives whose decision flips the primary metric (accuracy, F1) measures.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from veilfed.data import schema
from veilfed.errors import UsageError
from veilfed.robust.settings import ATTACK_MODALITIES, ATTACKABLE_KINDS, MODALITY_CHOICES

ATTACKS = ("pgd", "fgsm")
DEFAULT_STEPS = 10
# Each attackable modality's valid range, in its own units: pixels in [0, 1], samples in [-1, 1].
RANGES: dict[str, tuple[float, float]] = {"video": (0.0, 1.0), "audio": (-1.0, 1.0)}


@dataclass(frozen=True)
class Attack:
    """An L∞ attack: ``method`` (pgd or fgsm), radius ``eps`` per attacked modality, ``steps``
    (pgd; fgsm takes one), ``step_size`` (pgd; None: 2.5 · eps / steps)."""

    eps: float
    method: str = "pgd"
    steps: int = DEFAULT_STEPS
    modalities: tuple[str, ...] = ("video",)
    step_size: float | None = None

    def __post_init__(self) -> None:
        check_method(self.method, "method")
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise UsageError(f"eps: must be >= 0 and finite (got {self.eps})")
        if self.method == "pgd" and self.steps < 1:
            raise UsageError(f"steps: must be >= 1 (got {self.steps})")
        unknown = [m for m in self.modalities if m not in RANGES]
        if unknown or not self.modalities:
            raise UsageError(f"modalities: choose from {', '.join(ATTACK_MODALITIES)}")

    @property
    def iterations(self) -> int:
        return 1 if self.method == "fgsm" else self.steps

    @property
    def alpha(self) -> float:
        if self.method == "fgsm":
            return self.eps
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    @property
    def random_start(self) -> bool:
        return self.method == "pgd"

    def describe(self) -> dict[str, Any]:
        """The attack as a report's JSON entry."""
        return {
            "method": self.method,
            "eps": self.eps,
            "steps": self.iterations,
            "step_size": self.alpha,
            "modalities": list(self.modalities),
            "random_start": self.random_start,
        }


def check_method(method: str, where: str) -> None:
    if method not in ATTACKS:
        raise UsageError(f"{where} {method!r}: unknown attack; valid: {', '.join(ATTACKS)}")


def check_eps(eps: float, where: str) -> None:
    """``eps`` a radius an attack can use: > 0 and finite (one line naming ``where``)."""
    if not (isinstance(eps, int | float) and not isinstance(eps, bool)) or not (
        math.isfinite(eps) and eps > 0
    ):
        raise UsageError(f"{where}: give a radius > 0 and finite (got {eps})")


def attack_modalities(choice: str, encoded: Iterable[str], where: str) -> tuple[str, ...]:
    """The modalities ``choice`` (video, audio or all) attacks in a model encoding ``encoded``;
    one line naming ``where`` when the model reads none of them."""
    encoded = tuple(encoded)
    if choice not in MODALITY_CHOICES:
        raise UsageError(f"{where}: {choice!r}; valid: {', '.join(MODALITY_CHOICES)}")
    wanted = ATTACK_MODALITIES if choice == "all" else (choice,)
    chosen = tuple(m for m in wanted if m in encoded)
    if not chosen:
        have = ", ".join(encoded) or "none"
        other = [m for m in ATTACK_MODALITIES if m in encoded]
        hint = f"attack {other[0]} instead" if other else "the model has no attackable input"
        raise UsageError(
            f"{where}: {choice!r} but the model has no {' or '.join(wanted)} encoder "
            f"(its inputs: {have}); {hint}"
        )
    return chosen


def attackable(specs: Mapping[str, Any]) -> list[str]:
    """The tasks of ``specs`` (``{name: TaskSpec}``) whose kind is attackable, in order."""
    return [t for t, spec in specs.items() if spec.kind in ATTACKABLE_KINDS]


def _present(batch: Mapping[str, Any], modality: str, like: Tensor) -> Tensor:
    """1 where the sample carries ``modality``, 0 where not, shaped to broadcast over ``like``."""
    mask = batch.get("modality_mask")
    if mask is None:
        shape = (like.shape[0],) + (1,) * (like.dim() - 1)
        return torch.ones(shape, dtype=like.dtype, device=like.device)
    column = mask[:, schema.MODALITIES.index(modality)].to(device=like.device, dtype=like.dtype)
    return column.reshape(-1, *([1] * (like.dim() - 1)))


def _project(delta: Tensor, x: Tensor, eps: float, modality: str) -> Tensor:
    lo, hi = RANGES[modality]
    delta = delta.clamp(-eps, eps)
    return (x + delta).clamp(lo, hi) - x


def _uniform(like: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else like.device
    draw = torch.rand(like.shape, generator=generator, device=device, dtype=like.dtype)
    return ((2 * draw - 1) * eps).to(like.device)


def task_loss(model: Any, batch: Mapping[str, Any], tasks: Sequence[str]) -> Tensor:
    """The summed per-task loss of ``tasks`` on ``batch``: what the attack maximises."""
    outputs = model(batch)
    _, per_task = model.loss(outputs, batch)
    return torch.stack([per_task[t] for t in tasks]).sum()


def perturb(
    model: Any,
    batch: dict[str, Any],
    attack: Attack,
    tasks: Sequence[str],
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """``batch`` with its ``attack.modalities`` replaced by adversarial versions that maximise
    the summed loss of ``tasks`` (module docstring). ``batch`` lies on the model's device."""
    if not tasks:
        raise UsageError("attack: no task to attack")
    missing = [m for m in attack.modalities if m not in batch]
    if missing:
        raise UsageError(f"attack: the batch has no {missing[0]!r} input")
    clean = {m: batch[m].detach() for m in attack.modalities}
    if attack.eps == 0:
        return dict(batch)
    present = {m: _present(batch, m, x) for m, x in clean.items()}
    delta = {}
    for m, x in clean.items():
        start = _uniform(x, attack.eps, generator) if attack.random_start else torch.zeros_like(x)
        delta[m] = _project(start * present[m], x, attack.eps, m)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.enable_grad():
            for _ in range(attack.iterations):
                for d in delta.values():
                    d.requires_grad_(True)
                adv = dict(batch) | {m: clean[m] + delta[m] for m in clean}
                loss = task_loss(model, adv, tasks)
                if not loss.requires_grad:  # the loss does not depend on the attacked inputs
                    break
                grads = torch.autograd.grad(loss, list(delta.values()), allow_unused=True)
                for (m, d), g in zip(list(delta.items()), grads, strict=True):
                    step = torch.zeros_like(d) if g is None else g.sign() * present[m]
                    delta[m] = _project(d.detach() + attack.alpha * step, clean[m], attack.eps, m)
    finally:
        if hasattr(model, "train"):
            model.train(was_training)
    out = dict(batch)
    for m, x in clean.items():
        lo, hi = RANGES[m]
        out[m] = (x + delta[m]).clamp(lo, hi).detach()
    return out
