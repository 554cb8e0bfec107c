"""A model's weights as plain arrays: the form they take outside torch (messages, checkpoints).

Contract: a state is ``{name: np.ndarray}`` in ``state_dict`` order, each array a copy that
owns its memory. ``initial_state`` is a pure function of (model config, seed): every process
that builds the same config with the same seed gets the same weights, so a run's starting model
needs no file.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from veilfed.model.core import create_model


def numpy_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The model's weights as arrays (copies), in ``state_dict`` order."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_state(model: torch.nn.Module, arrays: dict[str, np.ndarray]) -> torch.nn.Module:
    """``model`` with ``arrays`` loaded (strict: every tensor named, no extra); returns it."""
    state = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in arrays.items()}
    model.load_state_dict(state)
    return model


def initial_state(config: Any, seed: int) -> dict[str, np.ndarray]:
    """The weights ``create_model(config)`` initialises under torch seed ``seed``."""
    torch.manual_seed(seed)
    return numpy_state(create_model(config))
