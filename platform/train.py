"""The one training loop (``veilfed train``, simulated clients, real nodes) and its Opacus wrapper.

``build_optimizer`` makes the optimizer ``[train]`` names (optimizer, lr, weight decay, momentum)
over the trainable parameters; ``train_steps`` sets its lr before every step from the run's
schedule (:mod:`veilfed.schedule`) and, without DP, clips the batch gradient to
``[train] clip_grad_norm``.
``make_private`` wraps model/optimizer/loader with Opacus DP-SGD (Poisson sampling) in either
grad-sample mode: "hooks" (per-sample gradients) or "ghost" (ghost clipping: per-sample gradient
norms only, two backward passes). Its noise and its Poisson sample come from OS entropy
(:mod:`veilfed.privacy.noise`), never from the run seed. ``train_steps`` runs either the plain
or the private loop with the same code, so a federated client is the centralized trainer on its
shard; what a strategy adds to a local step (FedProx's proximal pull) comes in as a hook.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from veilfed.data.dataset import collate
from veilfed.devices import model_device, to_device
from veilfed.errors import UsageError
from veilfed.privacy.noise import protect
from veilfed.robust.settings import AdversarialSettings
from veilfed.robust.training import AdversarialTraining

# Opacus' hooks fire on the first layer, whose input (the clip) needs no gradient: harmless.
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients")

GRAD_SAMPLE_MODES = ("hooks", "ghost")
# Measured by experiments/bench/model.py on the default model and batch (2 CPU cores): ghost
# clipping's two backward passes cost more than the hooks' per-sample gradients of this small model.
DEFAULT_MODE = "hooks"
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


def check_optimizer(train: Any, where: str = "train") -> None:
    """``[train]``'s optimizer fields: a known optimizer, lr > 0, weight_decay >= 0, and momentum
    in [0, 1), for sgd only (the Adam family has its own moment estimates)."""
    if train.optimizer not in OPTIMIZERS:
        raise UsageError(
            f"{where}.optimizer: {train.optimizer!r}; valid: {', '.join(sorted(OPTIMIZERS))}"
        )
    if not 0 < train.lr < math.inf:
        raise UsageError(f"{where}.lr: must be > 0 and finite (got {train.lr:g})")
    if not 0 <= train.weight_decay < math.inf:
        raise UsageError(f"{where}.weight_decay: must be >= 0 (got {train.weight_decay:g})")
    if not 0 <= train.momentum < 1:
        raise UsageError(f"{where}.momentum: must be in [0, 1) (got {train.momentum:g})")
    if train.momentum and train.optimizer != "sgd":
        raise UsageError(
            f"{where}.momentum: only optimizer = 'sgd' takes momentum (got {train.optimizer!r})"
        )


def build_optimizer(params: Iterable[nn.Parameter], train: Any) -> torch.optim.Optimizer:
    """The optimizer ``train`` (a ``[train]`` section) names over ``params``, with its lr, weight
    decay and (sgd) momentum. Build it before :func:`make_private`: Opacus wraps it, adding noise
    to the gradients the optimizer then steps with (weight decay uses no data, so it costs no
    privacy). Frozen parameters (``requires_grad`` False) are left out: the optimizer, and Opacus
    around it, see only what is trained."""
    check_optimizer(train)
    kwargs: dict[str, float] = {"lr": train.lr, "weight_decay": train.weight_decay}
    if train.optimizer == "sgd":
        kwargs["momentum"] = train.momentum
    trainable = [q for q in params if q.requires_grad]
    if not trainable:
        raise UsageError("train: every parameter is frozen; shorten model.freeze")
    return OPTIMIZERS[train.optimizer](trainable, **kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The MultiTaskModel inside an Opacus GradSampleModule (or the model itself)."""
    return getattr(model, "_module", model)


@dataclass
class Privacy:
    """What ``make_private`` returns besides the wrapped objects; ``epsilon(delta)`` is cumulative
    over every step taken with this accountant."""

    engine: Any
    accountant: Any
    criterion: Any
    mode: str
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float

    def epsilon(self, delta: float) -> float:
        return float(self.accountant.get_epsilon(delta)) if self.accountant.history else 0.0

    @property
    def steps(self) -> int:
        return sum(n for _, _, n in self.accountant.history)


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Any,
    noise_multiplier: float,
    max_grad_norm: float,
    mode: str = "auto",
    accountant: Any = None,
    accountant_kind: str = "rdp",
    poisson_sampling: bool = True,
) -> tuple[nn.Module, Any, Any, Privacy]:
    """Opacus DP-SGD around ``model`` (a MultiTaskModel); returns (model, optimizer, loader,
    privacy). Pass a persisted ``accountant`` (an Opacus accountant object) to keep cumulative
    epsilon across rounds; otherwise a fresh ``accountant_kind`` one is made.

    The noise and the Poisson sampler get their own OS-entropy generators
    (:func:`veilfed.privacy.noise.protect`): seeding torch beforehand fixes the initial weights and
    augmentations, not what the privacy guarantee rests on."""
    from opacus import PrivacyEngine

    from veilfed.model.core import MultiTaskCriterion

    mode = DEFAULT_MODE if mode == "auto" else mode
    if mode not in GRAD_SAMPLE_MODES:
        raise UsageError(f"privacy mode {mode!r}; valid: auto, {', '.join(GRAD_SAMPLE_MODES)}")
    if noise_multiplier < 0 or max_grad_norm <= 0:
        raise UsageError("privacy: noise_multiplier must be >= 0 and max_grad_norm > 0")
    engine = PrivacyEngine(accountant=accountant_kind)
    if accountant is not None:
        engine.accountant = accountant
    criterion = MultiTaskCriterion(model)
    kwargs: dict[str, Any] = {
        "module": model,
        "optimizer": optimizer,
        "data_loader": loader,
        "noise_multiplier": noise_multiplier,
        "max_grad_norm": max_grad_norm,
        "poisson_sampling": poisson_sampling,
        "grad_sample_mode": mode,
    }
    if mode == "ghost":
        kwargs["criterion"] = criterion
        private_model, private_opt, dp_criterion, private_loader = engine.make_private(**kwargs)
        criterion = dp_criterion
    else:
        private_model, private_opt, private_loader = engine.make_private(**kwargs)
    protect(private_opt, private_loader)
    if poisson_sampling:
        prime_empty_batches(private_loader.collate_fn, loader.dataset)
    sample_rate = 1.0 / max(len(private_loader), 1)
    privacy = Privacy(
        engine, engine.accountant, criterion, mode, noise_multiplier, max_grad_norm, sample_rate
    )
    return private_model, private_opt, private_loader, privacy


def train_collate(samples: list[Any]) -> dict[str, Any]:
    """A training batch without ``clip_id``: Opacus builds an empty Poisson batch from the
    structure of the first one and refuses non-tensor leaves (a list of strings). Every loader
    that goes through :func:`make_private` must collate with this."""
    batch = collate(samples)
    batch.pop("clip_id", None)
    return batch


def prime_empty_batches(collate_fn: Any, dataset: Any) -> None:
    """Teach Opacus' empty-batch collate the batch structure before the first Poisson batch.

    Opacus learns it from the first non-empty batch; when the very first batch is empty it falls
    back to a list of tensors shaped like one raw sample, which dict samples cannot give. The
    structure (keys, shapes past the batch axis, dtypes) is public; the empty batch built from it
    carries no data.
    """
    if getattr(collate_fn, "first_batch", False) is None and len(dataset) > 0:
        collate_fn.first_batch = train_collate([dataset[0]])


class CachedDataset(torch.utils.data.Dataset):
    """Samples built once (rendering a clip's targets costs more than a training step on it),
    then augmented per use (augmentations return new samples, so the cache stays clean)."""

    def __init__(
        self, dataset: Any, augment: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    ) -> None:
        self.samples = [dataset[i] for i in range(len(dataset))]
        self.augment = augment

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        return self.augment(sample) if self.augment is not None else sample


@dataclass
class TrainStats:
    """What :func:`train_steps` did. ``loss`` and ``task_losses`` are means over the steps on
    data. A run whose every Poisson batch was empty (DP-SGD on a small shard sometimes draws
    that) took only noise-only steps and has no loss: ``loss`` is NaN and ``task_losses`` empty,
    so no consumer mistakes it for a loss of 0 (trackers and the round's loss average skip
    non-finite values)."""

    steps: int = 0
    samples: int = 0
    batches: int = 0  # steps on data (an empty Poisson batch is a step without a loss)
    loss: float = 0.0
    task_losses: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    lrs: list[float] = field(default_factory=list)  # the lr of every step taken, in order


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every param group's lr. An Opacus ``DPOptimizer``'s ``param_groups`` are its wrapped
    optimizer's own list, so this reaches the optimizer that steps."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def _is_empty(batch: Any) -> bool:
    """Opacus' Poisson loader yields a 0-row dict (or, before any batch, a bare list)."""
    if not isinstance(batch, dict):
        return True
    first = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
    return first is None or first.shape[0] == 0


def _noise_only_step(optimizer: Any, mode: str) -> None:
    """An empty Poisson batch is still a DP step (skipping it would reveal the batch was empty):
    zero per-sample gradients (hooks) or zero clipped gradients (ghost); Opacus adds the noise and
    its accountant counts the step."""
    for param in optimizer.params:
        if mode == "ghost":
            param.grad = torch.zeros_like(param)
        else:
            param.grad_sample = param.new_zeros((0, *param.shape))
    optimizer.step()


def _set_step_lr(
    optimizer: torch.optim.Optimizer, lr: Callable[[int], float] | None, stats: TrainStats
) -> None:
    if lr is not None:
        set_lr(optimizer, lr(stats.steps))
    stats.lrs.append(float(optimizer.param_groups[0]["lr"]))


def train_steps(
    model: nn.Module,
    loader: Iterable[dict[str, Any]],
    optimizer: torch.optim.Optimizer,
    steps: int | None = None,
    epochs: int | None = None,
    privacy: Privacy | None = None,
    augment: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    after_step: Callable[[], None] | None = None,
    lr: Callable[[int], float] | None = None,
    clip_grad_norm: float = 0.0,
    adversarial: AdversarialSettings | None = None,
) -> TrainStats:
    """Train for ``steps`` optimizer steps or ``epochs`` passes over ``loader``.

    With ``privacy`` (from :func:`make_private`) the model, optimizer and loader must be the
    wrapped ones; the loss goes through Opacus' criterion in ghost mode, and an empty Poisson
    batch takes a noise-only step. The model's loss weighting sees each epoch's mean task losses
    once per epoch (``end_epoch``: dynamic weight average needs them). ``after_step`` runs after
    every optimizer step on data, outside the DP step (e.g. FedProx's pull towards the global
    model, which uses no data); ``on_step(step, loss)`` reports progress.

    ``lr(k)`` is the lr of this call's step ``k`` (0-based, noise-only steps included), set on
    the optimizer before each step (:func:`veilfed.schedule.schedule_for` places the call in the
    run). ``clip_grad_norm > 0`` clips the batch gradient's total L2 norm before each plain step;
    under DP it is not applied: Opacus already clips every per-sample gradient to the privacy
    section's ``max_grad_norm`` (its noiseless mean is bounded by it), and clipping the noised
    gradient again would be privacy-free post-processing that mostly scales the noise down.
    ``adversarial`` (``[train] adversarial``) replaces each batch by its PGD-perturbed version
    before the step, DP-safely (:mod:`veilfed.robust.training`).
    """
    if (steps is None) == (epochs is None):
        raise UsageError("train_steps: give exactly one of steps or epochs")
    core = unwrap(model)
    device = model_device(core)
    criterion = privacy.criterion if privacy is not None else None
    model.train()
    attack = AdversarialTraining(model, adversarial) if adversarial is not None else None
    stats = TrainStats()
    sums: dict[str, float] = {}
    epoch_sums: dict[str, float] = {}
    epoch_batches = 0
    start = time.perf_counter()
    epoch = 0
    while True:
        for batch in loader:
            if _is_empty(batch):
                if privacy is not None:
                    optimizer.zero_grad(set_to_none=True)
                    _set_step_lr(optimizer, lr, stats)
                    _noise_only_step(optimizer, privacy.mode)
                    stats.steps += 1
                    if steps is not None and stats.steps >= steps:
                        break
                continue
            if augment is not None:
                batch = augment(batch)
            batch = to_device(batch, device)
            if attack is not None:
                batch = attack(batch)
            optimizer.zero_grad(set_to_none=True)
            outputs = model(batch)
            if criterion is not None:
                loss = criterion(outputs, batch)
                inner = criterion.criterion if privacy.mode == "ghost" else criterion
                per_task = inner.last_task_losses
            else:
                loss, per_task = core.loss(outputs, batch)
            loss.backward()
            if clip_grad_norm > 0 and privacy is None:
                grads = [q for q in core.parameters() if q.grad is not None]
                torch.nn.utils.clip_grad_norm_(grads, clip_grad_norm)
            _set_step_lr(optimizer, lr, stats)
            optimizer.step()
            if after_step is not None:
                after_step()
            stats.steps += 1
            value = float(loss.item())
            stats.samples += int(batch["modality_mask"].shape[0])
            stats.loss += value
            stats.batches += 1
            epoch_batches += 1
            for task, v in per_task.items():
                v = float(v.detach())
                sums[task] = sums.get(task, 0.0) + v
                epoch_sums[task] = epoch_sums.get(task, 0.0) + v
            if on_step is not None:
                on_step(stats.steps, value)
            if steps is not None and stats.steps >= steps:
                break
        epoch += 1
        if epoch_batches:
            means = torch.tensor([epoch_sums[t] / epoch_batches for t in core.tasks])
            core.weighting.end_epoch(means)
        epoch_sums, epoch_batches = {}, 0
        if (steps is not None and stats.steps >= steps) or (epochs is not None and epoch >= epochs):
            break
        if stats.steps == 0:
            raise UsageError("train_steps: the loader yielded no batches")
    stats.loss = stats.loss / stats.batches if stats.batches else math.nan
    stats.task_losses = {t: v / stats.batches for t, v in sums.items()}
    stats.wall_s = time.perf_counter() - start
    return stats
