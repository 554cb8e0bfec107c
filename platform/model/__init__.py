"""Shared model core: registries of encoders, fusions, heads and loss weightings, built from config.

Public API (the federated layer uses only these and ``state_dict``)::

    model = create_model(cfg)              # cfg: ExperimentConfig or its ModelSection
    outputs = model(batch)                 # {task: output}; batch from veilfed.data.dataset.collate
    total, per_task = model.loss(outputs, batch)
    metrics = evaluate(model, loader)      # {task: {metric: value}}
    scores = score(model, loader, fit_baselines(model.task_specs, train_loader))  # + margins
    uri = log_model(tracker, model, cfg, "model")  # MLflow PyTorch model (veilfed.model.saved)
    model = load(uri)                      # rebuilt from its weights and [model] config
    arrays = initial_state(cfg, seed)      # {name: np.ndarray}: the weights seed initialises
    list_registries()                      # {"encoders": [...], "fusions": [...], ...}
"""

from __future__ import annotations

import importlib

from veilfed.model import encoders, fusion, heads, losses  # noqa: F401  (registration)
from veilfed.model.core import MultiTaskCriterion, MultiTaskModel, create_model
from veilfed.model.evaluate import Scores, evaluate, score
from veilfed.model.registry import ENCODERS, FUSIONS, HEADS, LOSSES
from veilfed.model.saved import load, log_model, read_state
from veilfed.model.state import initial_state, load_state, numpy_state


def _optional_registry(module: str, attr: str) -> list[str]:
    """Names in another package's registry, or [] while that package has none."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return []
    registry = getattr(mod, attr, None)
    return registry.names() if registry is not None else []


def list_registries() -> dict[str, list[str]]:
    """Every registry veilfed builds from config, by kind."""
    return {
        "encoders": ENCODERS.names(),
        "fusions": FUSIONS.names(),
        "heads": HEADS.names(),
        "losses": LOSSES.names(),
        "augmentations": _optional_registry("veilfed.augment", "AUGMENTATIONS"),
        "compressions": _optional_registry("veilfed.compress", "COMPRESSIONS"),
    }


__all__ = [
    "ENCODERS",
    "FUSIONS",
    "HEADS",
    "LOSSES",
    "MultiTaskCriterion",
    "MultiTaskModel",
    "Scores",
    "create_model",
    "evaluate",
    "initial_state",
    "list_registries",
    "load",
    "load_state",
    "log_model",
    "numpy_state",
    "score",
    "read_state",
]
