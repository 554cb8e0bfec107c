"""The compression registry and the two kinds of compression it holds.

*Model* compressions turn a trained model into a smaller one (``compress(model) -> model``);
*update* compressors shrink federated messages (``compress(update) -> payload`` and back).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from veilfed.compress.report import CompressionReport, state_dict_bytes
from veilfed.registry import Registry

COMPRESSIONS: Registry[Any] = Registry("compression")

Update = list[np.ndarray]
Payload = dict[str, np.ndarray]


class ModelCompression:
    """Base: ``compression(model, eval_fn)`` -> ``(smaller copy, CompressionReport)``."""

    name = ""
    kind = "model"

    def compress(self, model: nn.Module) -> nn.Module:
        """A compressed copy; ``model`` itself is left untouched."""
        raise NotImplementedError

    def size(self, model: nn.Module) -> int:
        """Bytes the compressed model needs to be stored or sent."""
        return state_dict_bytes(model)

    def __call__(
        self, model: nn.Module, eval_fn: Callable[[nn.Module], float] | None = None
    ) -> tuple[nn.Module, CompressionReport]:
        before = eval_fn(model) if eval_fn else None
        small = self.compress(model)
        return small, CompressionReport(
            name=self.name,
            bytes_before=state_dict_bytes(model),
            bytes_after=self.size(small),
            metric_before=before,
            metric_after=eval_fn(small) if eval_fn else None,
        )


class UpdateCompressor:
    """Base for FL message compression; one instance per client (it may keep a residual)."""

    name = ""
    kind = "update"

    def compress(self, update: Update) -> Payload:
        raise NotImplementedError

    def decompress(self, payload: Payload) -> Update:
        raise NotImplementedError

    def report(
        self, update: Update, eval_fn: Callable[[Update], float] | None = None
    ) -> CompressionReport:
        """Ratio and relative L2 reconstruction error on ``update``, without touching state."""
        probe = copy.deepcopy(self)
        payload = probe.compress(update)
        restored = probe.decompress(payload)
        flat = np.concatenate([np.asarray(a, np.float64).ravel() for a in update])
        back = np.concatenate([np.asarray(a, np.float64).ravel() for a in restored])
        err = float(np.linalg.norm(flat - back) / max(np.linalg.norm(flat), 1e-12))
        return CompressionReport(
            name=self.name,
            bytes_before=sum(np.asarray(a).nbytes for a in update),
            bytes_after=payload_bytes(payload),
            metric_before=eval_fn(update) if eval_fn else None,
            metric_after=eval_fn(restored) if eval_fn else None,
            extra={"rel_error": err},
        )


def payload_bytes(payload: Payload) -> int:
    """Bytes of the arrays a payload carries (what goes into a Flower ArrayRecord)."""
    return sum(a.nbytes for a in payload.values())
