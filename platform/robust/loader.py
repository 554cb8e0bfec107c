"""A loader under attack: the same batches, clips and labels, with adversarial inputs.

:class:`Attacked` wraps any iterable of collated batches (``veilfed.data.dataset.collate``) and
yields each batch with the attack's modalities replaced by :func:`veilfed.robust.attack.perturb`'s
output, so the one evaluation (``veilfed.model.score``) gives robust metrics on exactly the clips,
order and labels of the clean pass, beside the same label-only baselines (a baseline reads
labels, never inputs, so it scores alike on both passes). Contract:

* each pass draws its random starts from one ``torch.Generator`` seeded with ``seed`` when the
  pass begins: a pass is a function of the model, the batches and the seed, and two passes
  (or two tasks attacked in turn) see the same starts;
* the attack runs on the unwrapped model on its device; the replaced tensors come back on the
  device the loader gave, so targets, masks and inputs stay together as on a clean pass;
* grad mode is the attack's own business (:func:`perturb` enables it), so the wrapper works inside
  the ``torch.no_grad`` that evaluation iterates under.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from veilfed.devices import model_device, to_device
from veilfed.model.evaluate import unwrap
from veilfed.robust.attack import Attack, perturb


class Attacked:
    """``loader``'s batches with ``attack`` against the summed loss of ``tasks`` applied."""

    def __init__(
        self,
        model: Any,
        loader: Iterable[dict[str, Any]],
        attack: Attack,
        tasks: Sequence[str],
        seed: int = 0,
    ) -> None:
        self.model = unwrap(model)
        self.loader = loader
        self.attack = attack
        self.tasks = tuple(tasks)
        self.seed = seed

    def __iter__(self) -> Iterator[dict[str, Any]]:
        device = model_device(self.model)
        generator = torch.Generator(device=device).manual_seed(self.seed)
        for batch in self.loader:
            adv = perturb(self.model, to_device(batch, device), self.attack, self.tasks, generator)
            yield dict(batch) | {m: adv[m].to(batch[m].device) for m in self.attack.modalities}
