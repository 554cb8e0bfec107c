"""Where tensors run: ``--device auto|cpu|cuda`` and ``[train] device``.

Contract:

- :func:`resolve` turns a name into a ``torch.device``: ``cpu``; ``cuda`` (the first CUDA
  device, or a one-line ``UsageError`` naming the flag or field when torch sees none); ``auto``
  (CUDA when torch sees a device, else the CPU).
- A model's device is its parameters' (:func:`model_device`). Training and evaluation loops move
  each batch there (:func:`to_device`) and bring predictions back to the CPU, so metrics,
  baselines, saved states, exported files and federated arrays are CPU tensors whatever the
  device, and a model trained on a GPU loads anywhere.
- DP noise is drawn on the model's device from OS entropy (``veilfed.privacy.noise.protect``).
- A virtual client of a simulation runs on CUDA only when ``[federated] gpus_per_client > 0``
  (Ray's share of a GPU for each client): Ray does not hide the GPUs from actors that asked for
  none, so ``auto`` alone would put every client on one GPU unaccounted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from veilfed.errors import UsageError

DEVICES = ("auto", "cpu", "cuda")


def check_device(name: str, where: str = "--device") -> None:
    if name not in DEVICES:
        raise UsageError(f"{where} {name!r}: use one of {', '.join(DEVICES)}")


def resolve(name: str, where: str = "--device") -> torch.device:
    """The device ``name`` means on this machine (module docstring)."""
    check_device(name, where)
    available = torch.cuda.is_available()
    if name == "cuda" and not available:
        raise UsageError(
            f"{where} cuda: torch sees no CUDA device on this machine; use auto or cpu"
        )
    return torch.device("cuda" if name != "cpu" and available else "cpu")


def model_device(model: Any) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a model without parameters, such
    as an ONNX Runtime session)."""
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor inside (dicts, lists, tuples) on ``device``; anything else and
    tensors already there are returned as they are."""
    if isinstance(obj, torch.Tensor):
        # Asynchronous only towards a GPU: a non-blocking copy back to the CPU may be read
        # before it has landed.
        return obj if obj.device == device else obj.to(device, non_blocking=device.type == "cuda")
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    if isinstance(obj, tuple):
        moved = [to_device(v, device) for v in obj]
        return type(obj)(*moved) if hasattr(obj, "_fields") else tuple(moved)
    return obj
