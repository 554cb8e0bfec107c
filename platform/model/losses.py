"""Multi-task loss weighting registry: per-sample task losses [B, n] -> per-sample total [B].

Keeping the total per-sample lets Opacus ghost clipping reweight samples. Learnable weights are
parameters of an ``nn.Linear`` applied to a constant input, so Opacus computes their per-sample
gradients with its standard Linear sampler (a bare ``nn.Parameter`` has no sampler).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from veilfed.model.registry import LOSSES


class LossWeighting(nn.Module):
    """Base: ``weights`` are the config's fixed task weights, in ``tasks`` order.

    ``raw_loss_state``: the weighting keeps buffers computed from un-noised training losses
    (``end_epoch``). Buffers travel with the model's state, and DP-SGD noises only gradients, so
    such a weighting cannot run under DP: :func:`dp_refusal` names it.
    """

    raw_loss_state = False

    def __init__(self, tasks: tuple[str, ...], weights: tuple[float, ...]) -> None:
        super().__init__()
        self.tasks = tasks
        self.register_buffer("base", torch.tensor(weights, dtype=torch.float32))

    def forward(self, losses: Tensor) -> Tensor:
        raise NotImplementedError

    def end_epoch(self, mean_losses: Tensor) -> None:
        """Called by the trainer with each epoch's mean task losses [n] (DWA uses them)."""

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.base.tolist(), strict=True))


@LOSSES.register("fixed")
class FixedWeighting(LossWeighting):
    """Weighted sum with the config's task weights."""

    def forward(self, losses: Tensor) -> Tensor:
        return losses @ self.base


@LOSSES.register("uncertainty")
class UncertaintyWeighting(LossWeighting):
    """Kendall, Gal & Cipolla (2018): sum_t w_t (exp(-s_t) L_t + s_t), s_t = log sigma_t^2."""

    def __init__(self, tasks: tuple[str, ...], weights: tuple[float, ...]) -> None:
        super().__init__(tasks, weights)
        self.log_vars = nn.Linear(1, len(tasks), bias=False)
        nn.init.zeros_(self.log_vars.weight)

    def forward(self, losses: Tensor) -> Tensor:
        s = self.log_vars(torch.ones(losses.shape[0], 1, device=losses.device))
        return ((torch.exp(-s) * losses + s) * self.base).sum(dim=1)

    def current_weights(self) -> dict[str, float]:
        s = self.log_vars.weight.detach()[:, 0]
        return dict(zip(self.tasks, (self.base * torch.exp(-s)).tolist(), strict=True))


@LOSSES.register("dwa")
class DynamicWeightAverage(LossWeighting):
    """Liu, Johns & Davison (2019): w_t = n softmax_t(r_t / temperature), r_t the ratio of task t's
    last two epoch losses; uniform for the first two epochs."""

    raw_loss_state = True

    def __init__(
        self, tasks: tuple[str, ...], weights: tuple[float, ...], temperature: float = 2.0
    ) -> None:
        super().__init__(tasks, weights)
        self.temperature = temperature
        n = len(tasks)
        self.register_buffer("dynamic", torch.ones(n))
        self.register_buffer("history", torch.zeros(2, n))
        self.register_buffer("epochs", torch.zeros((), dtype=torch.long))

    def forward(self, losses: Tensor) -> Tensor:
        return losses @ (self.base * self.dynamic)

    def end_epoch(self, mean_losses: Tensor) -> None:
        self.history = torch.stack([self.history[1], mean_losses.detach().to(self.history)])
        self.epochs += 1
        if int(self.epochs) >= 2:
            ratio = self.history[1] / self.history[0].clamp(min=1e-8)
            n = len(self.tasks)
            self.dynamic = n * torch.softmax(ratio / self.temperature, dim=0)

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, (self.base * self.dynamic).tolist(), strict=True))


def dp_refusal(name: str) -> str | None:
    """Why loss weighting ``name`` cannot run under DP-SGD (its state comes from un-noised
    losses), or None."""
    if not LOSSES.get(name).raw_loss_state:
        return None
    usable = ", ".join(
        n for n in LOSSES.names() if not getattr(LOSSES.get(n), "raw_loss_state", False)
    )
    return (
        f"loss_weighting {name!r} sets task weights from un-noised training losses that leave with "
        f"the model, which DP-SGD does not cover; with privacy use one of: {usable}"
    )
