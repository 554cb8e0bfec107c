"""One tuning trial as a federated simulation of the public synthetic world.

``veilfed tune --federated`` hands :func:`federated_trial` to :func:`veilfed.tuning.tune`: the
trial's config is written to a temporary TOML, prepared like ``veilfed simulate --config`` with no
store (so the clients hold the config's public ``[world]``, never anyone's data), run on Flower's
simulation engine, and its MLflow run is made a child of the study. The trial's value is the run's
best-round ``[train] select_metric`` (``summary["model"]["best_value"]``). Rounds are not reported
to Optuna one by one (the ServerApp runs inside Flower's engine), so federated trials are never
pruned: each runs its configured rounds.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w

from veilfed.config import ExperimentConfig
from veilfed.coordinator import prepare as lifecycle
from veilfed.launch.simulation import run_engine
from veilfed.tuning import toml_table


def federated_trial(runs_dir: Path) -> Callable[..., dict[str, Any]]:
    """A trial runner for :func:`veilfed.tuning.tune` keeping its runs under ``runs_dir``."""

    def run(
        cfg: ExperimentConfig,
        *,
        on_epoch: Any = None,
        tags: dict[str, str] | None = None,
        run_name: str | None = None,
    ) -> dict[str, Any]:
        del on_epoch  # federated trials are not pruned (module docstring)
        with tempfile.TemporaryDirectory(prefix="veilfed-trial-") as tmp:
            path = Path(tmp) / f"{cfg.name}.toml"
            path.write_text(tomli_w.dumps(toml_table(cfg.to_table())), encoding="utf-8")
            settings, tracker = lifecycle.prepare(path, {}, None, None, None, None, runs_dir)
            with tracker.failing_on_error():
                named = {"mlflow.runName": run_name} if run_name else {}
                tracker.set_tags({**(tags or {}), **named})
                return run_engine(settings, None)  # the summary names its run_id

    return run
