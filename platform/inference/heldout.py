"""A trained model beside the experiment it was trained with, and that experiment's clips.

:func:`held_out` loads ``MODEL`` (any form ``veilfed.inference.model_source`` takes) and the
experiment config ``CFG``, refuses a config whose tasks (names and kinds) are not the model's,
and reads the clips every command that measures a trained model uses: the training loader (for
the label-only baselines, fitted on it, and for training-based compression) and the held-out
loader (the synthetic world's test seed, or the store's test split as ``veilfed train --store``
makes it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veilfed.centralized import baseline_batches, loaders
from veilfed.config import load_config
from veilfed.data.splits import split_store
from veilfed.errors import UsageError
from veilfed.inference.source import model_source
from veilfed.metrics import fit_baselines
from veilfed.model.saved import load_with_input


@dataclass(frozen=True)
class Clips:
    """What measuring a trained model reads: the ``train`` and held-out ``test`` loaders and the
    label-only ``baselines`` fitted on the training clips."""

    train: Any
    test: Any
    baselines: Any


def load_model(model: str, config: Path) -> tuple[Any, Any, Any]:
    """(experiment config, model, its geometry), the config's tasks checked against the model's."""
    cfg = load_config(config)
    net, world = load_with_input(model_source(model))
    declared = {n: s.kind for n, s in cfg.model.task_specs().items()}
    if declared != {n: s.kind for n, s in net.task_specs.items()}:
        raise UsageError(
            f"{config}: its tasks ({', '.join(declared)}) are not the model's "
            f"({', '.join(net.task_specs)}); give the config the model was trained with"
        )
    return cfg, net, world


def held_out(cfg: Any, net: Any, store: Path | None, key_file: Path | None) -> Clips:
    """The clips of the module docstring for ``net`` trained with ``cfg``."""
    if (store is None) != (key_file is None):
        raise UsageError("--store and --key-file go together: give both or neither")
    split = None
    if store is not None and key_file is not None:
        split = split_store(store, key_file, cfg.federated.holdout, cfg.train.seed)
    train, test, _ = loaders(cfg, split)
    baselines = fit_baselines(net.task_specs, baseline_batches(train))
    return Clips(train, test, baselines)
