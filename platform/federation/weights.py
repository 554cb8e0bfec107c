"""The model both apps exchange: its starting weights and the flat layout HE vectors follow.

Contract: a run's global model starts as the model core's :func:`~veilfed.model.state.
initial_state` of the run's model config under the run seed, so the coordinator and every client
derive the same weights and the same tensor names from the settings alone. An HE update and the
shadow FedAvg are one flat float vector: the tensors in ``state_dict`` order, each flattened
(``veilfed.crypto.he_packing.flatten``); :func:`layout` gives the names and specs to undo it.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np

from veilfed.config import parse_config
from veilfed.crypto.he_packing import ArraySpec, flatten
from veilfed.federation.settings import RunSettings
from veilfed.model.state import initial_state


@functools.lru_cache(maxsize=2)
def _experiment(config_json: str) -> Any:
    return parse_config(json.loads(config_json), "run settings")


def experiment(settings: RunSettings) -> Any:
    """The run's experiment config (``ExperimentConfig``), parsed once per process."""
    return _experiment(json.dumps(settings.config, sort_keys=True))


def initial_arrays(settings: RunSettings) -> dict[str, np.ndarray]:
    """The global model every run starts from: the model core initialised with the run seed."""
    return initial_state(experiment(settings).model, settings.seed)


@functools.lru_cache(maxsize=4)
def _layout(settings_json: str) -> tuple[tuple[str, ...], tuple[ArraySpec, ...]]:
    arrays = initial_arrays(RunSettings.from_json(settings_json))
    _, specs = flatten(list(arrays.values()))
    return tuple(arrays), tuple(specs)


def layout(settings: RunSettings) -> tuple[tuple[str, ...], tuple[ArraySpec, ...]]:
    """Tensor names (state-dict order) and specs of the model every flat vector follows."""
    return _layout(settings.to_json())


def to_flat(settings: RunSettings, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """``arrays`` as one flat vector in the run's :func:`layout`."""
    names, _ = layout(settings)
    return flatten([arrays[k] for k in names])[0]
