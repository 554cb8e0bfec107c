"""Adversarial training: each training batch replaced by its PGD-perturbed version before the step.

:class:`AdversarialTraining` is what ``veilfed.train.train_steps`` calls on every non-empty batch
when ``[train] adversarial`` is set (:mod:`veilfed.robust.settings`): PGD (random start,
``steps`` steps of ``2.5 · eps / steps``) against the sum of the losses of every attackable task
(classification, binary, multilabel), on the configured modalities the model encodes; then the
loop's ordinary step runs on the perturbed batch. So centralized runs, simulated clients and
real nodes train alike, and under DP-SGD the step is the usual private one:

* Opacus' per-sample clipping and noise apply to the adversarial loss, and the accountant sees
  the same steps at the same sample rate: ε after N steps is what it would be without the
  attack. The attack uses no other sample's data: the model has no cross-sample layer (it runs
  under Opacus) and the sign of a per-sample input gradient ignores the batch-mean scale, so a
  sample's perturbation depends on that sample and the current model only.
* The attack's forward and backward record nothing for the private step: the model is in eval
  mode during the attack (Opacus' activation hooks record only in training mode), the wrapper's
  hooks are switched off (``GradSampleModule.disable_hooks``, also the ghost-clipping module's
  base) and back on after, and gradients are taken with ``torch.autograd.grad`` w.r.t. the
  perturbations only, so no ``grad``, ``grad_sample`` or ``_norm_sample`` is left behind.
* Random starts come from a generator of this object, seeded once from torch's global
  generator (which the run seeds): never from the OS-entropy generators of the DP noise and the
  Poisson sampler (:mod:`veilfed.privacy.noise`), which the attack neither draws from nor
  advances.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from veilfed.devices import model_device
from veilfed.robust.attack import Attack, attack_modalities, attackable, perturb
from veilfed.robust.settings import AdversarialSettings


@contextmanager
def hooks_off(model: Any) -> Iterator[None]:
    """Opacus' grad-sample hooks of ``model`` (a ``GradSampleModule`` of either mode) disabled
    inside, restored after; a plain module is left as it is."""
    enabled = getattr(model, "hooks_enabled", None)
    if enabled is None:
        yield
        return
    model.disable_hooks()
    try:
        yield
    finally:
        if enabled:
            model.enable_hooks()


class AdversarialTraining:
    """``self(batch)``: ``batch`` (on the model's device) with its attacked inputs replaced."""

    def __init__(self, model: Any, settings: AdversarialSettings) -> None:
        self.model = model
        self.core = getattr(model, "_module", model)
        modalities = attack_modalities(
            settings.modality, self.core.modalities, "train.adversarial.modality"
        )
        self.attack = Attack(settings.eps, "pgd", settings.steps, modalities)
        self.tasks = attackable(self.core.task_specs)
        seed = int(torch.randint(0, 2**62, (1,)))
        self.generator = torch.Generator(device=model_device(self.core)).manual_seed(seed)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        with hooks_off(self.model):
            return perturb(self.core, batch, self.attack, self.tasks, self.generator)
