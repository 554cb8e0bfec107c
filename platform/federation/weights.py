"""The model both apps exchange: its starting weights and the flat layout HE vectors follow.

Contract: a run's global model starts as the model core's :func:`~veilfed.model.state.
initial_state` of the run's model config under the run seed, so the coordinator and every client
derive the same weights and the same tensor names from the settings alone; a run prepared with
``--init-from`` starts from the weights file its run directory holds instead (same names). An
HE update and the shadow FedAvg are one flat float vector: the tensors in ``state_dict`` order,
each flattened (``veilfed.crypto.he_packing.flatten``); :func:`layout` gives the names and specs
to undo it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from veilfed.config import parse_config
from veilfed.crypto.he_packing import ArraySpec, flatten
from veilfed.errors import UsageError
from veilfed.federation.settings import RunSettings
from veilfed.model.state import initial_state

INITIAL_WEIGHTS = "initial_weights"  # RunSettings.extra key: the run dir's .npz of start weights


@functools.lru_cache(maxsize=2)
def _experiment(config_json: str) -> Any:
    return parse_config(json.loads(config_json), "run settings")


def experiment(settings: RunSettings) -> Any:
    """The run's experiment config (``ExperimentConfig``), parsed once per process."""
    return _experiment(json.dumps(settings.config, sort_keys=True))


def initial_arrays(settings: RunSettings) -> dict[str, np.ndarray]:
    """The global model every run starts from: the model core initialised with the run seed, or,
    when the run was prepared ``--init-from`` weights, the file its settings name in
    ``extra[INITIAL_WEIGHTS]`` (in the run directory: only the coordinator reads it)."""
    arrays = initial_state(experiment(settings).model, settings.seed)
    name = settings.extra.get(INITIAL_WEIGHTS)
    if not name:
        return arrays
    path = Path(settings.run_dir) / str(name)
    try:
        with np.load(path, allow_pickle=False) as data:
            given = {k: data[k].copy() for k in data.files}
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: the run's initial weights cannot be read ({exc})") from None
    if {k: v.shape for k, v in given.items()} != {k: v.shape for k, v in arrays.items()}:
        raise UsageError(f"{path}: the run's initial weights do not fit its model config")
    return {k: given[k] for k in arrays}


@functools.lru_cache(maxsize=4)
def _layout(settings_json: str) -> tuple[tuple[str, ...], tuple[ArraySpec, ...]]:
    settings = RunSettings.from_json(settings_json)
    arrays = initial_state(experiment(settings).model, settings.seed)  # names and shapes only
    _, specs = flatten(list(arrays.values()))
    return tuple(arrays), tuple(specs)


def layout(settings: RunSettings) -> tuple[tuple[str, ...], tuple[ArraySpec, ...]]:
    """Tensor names (state-dict order) and specs of the model every flat vector follows."""
    return _layout(settings.to_json())


def to_flat(settings: RunSettings, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """``arrays`` as one flat vector in the run's :func:`layout`."""
    names, _ = layout(settings)
    return flatten([arrays[k] for k in names])[0]
