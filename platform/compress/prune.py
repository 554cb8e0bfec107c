"""Magnitude and structured pruning, made permanent so the state_dict keeps its keys and shapes.

The masks ``torch.nn.utils.prune`` computes are multiplied into a copy of the model rather than
made permanent with ``prune.remove``, which would re-register the weights and reorder the
state_dict — federated code ships parameters as a list in state_dict order.

Pruned models keep their dense shapes (federated aggregation and checkpoints stay compatible);
their size is measured in the sparse format of :func:`veilfed.compress.report.pack_sparse`
(1 bit per zero), which is what storing or shipping them costs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import prune

from veilfed.compress.registry import COMPRESSIONS, ModelCompression
from veilfed.compress.report import pack_sparse
from veilfed.errors import UsageError

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_amount(name: str, amount: float) -> None:
    if not 0.0 <= amount < 1.0:
        raise UsageError(f"compression {name}: amount={amount} must be in [0, 1)")


def _prunable(model: nn.Module, types: tuple[type[nn.Module], ...]) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, types)]


def sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over prunable layers."""
    weights = [m.weight for m in _prunable(model, PRUNABLE)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / max(total, 1)


def _masked_copy(model: nn.Module, prune_fn: Callable[[nn.Module], None]) -> nn.Module:
    """Copy of ``model`` with the weight masks ``prune_fn`` leaves on a scratch copy applied."""
    scratch, out = copy.deepcopy(model), copy.deepcopy(model)
    prune_fn(scratch)
    for m_out, m_scratch in zip(out.modules(), scratch.modules(), strict=True):
        mask = getattr(m_scratch, "weight_mask", None)
        if mask is not None:
            with torch.no_grad():
                m_out.weight.mul_(mask)
    return out


class _Pruning(ModelCompression):
    def size(self, model: nn.Module) -> int:
        return len(pack_sparse(model.state_dict()))


@COMPRESSIONS.register("magnitude_prune")
class MagnitudePrune(_Pruning):
    """Global L1 unstructured pruning: the ``amount`` smallest weights over all layers go to 0."""

    name = "magnitude_prune"

    def __init__(self, amount: float = 0.5) -> None:
        _check_amount(self.name, amount)
        self.amount = amount

    def compress(self, model: nn.Module) -> nn.Module:
        if not _prunable(model, PRUNABLE):
            raise UsageError("compression magnitude_prune: model has no Linear or Conv layer")

        def prune_fn(m: nn.Module) -> None:
            params = [(layer, "weight") for layer in _prunable(m, PRUNABLE)]
            prune.global_unstructured(
                params, pruning_method=prune.L1Unstructured, amount=self.amount
            )

        return _masked_copy(model, prune_fn)


@COMPRESSIONS.register("structured_prune")
class StructuredPrune(_Pruning):
    """L2 structured pruning of whole channels, per layer.

    ``dim=1`` (default) removes input channels of convs and input features of linear layers,
    which never silences an output unit (safe for task heads); ``dim=0`` removes filters/neurons
    (classic filter pruning). ``convs_only`` restricts it to conv layers.
    """

    name = "structured_prune"

    def __init__(self, amount: float = 0.3, dim: int = 1, convs_only: bool = False) -> None:
        _check_amount(self.name, amount)
        if dim not in (0, 1):
            raise UsageError(f"compression structured_prune: dim={dim} must be 0 or 1")
        self.amount, self.dim, self.convs_only = amount, dim, convs_only

    def compress(self, model: nn.Module) -> nn.Module:
        types = PRUNABLE[1:] if self.convs_only else PRUNABLE
        if not _prunable(model, types):
            raise UsageError("compression structured_prune: model has no layer to prune")

        def prune_fn(m: nn.Module) -> None:
            for layer in _prunable(m, types):
                prune.ln_structured(layer, "weight", amount=self.amount, n=2, dim=self.dim)

        return _masked_copy(model, prune_fn)
