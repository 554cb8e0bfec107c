"""Putting a run's model into MLflow's model registry, with ``champion`` / ``challenger`` aliases.

:func:`register` registers a run's best model (``summary["model"]["best"]``, the one its
held-out selection metric picked) as a new version of registered model ``name`` and tags the
version with that metric and its value (``veilfed.select_metric``, ``veilfed.value``,
``veilfed.run_id``). Aliases follow the held-out value:

* the first version becomes ``champion``;
* a later version that beats the champion on the same metric (in the metric's direction) becomes
  ``champion`` and the old champion ``challenger``; otherwise it becomes ``challenger``;
* a version selected on another metric, or without a finite value, is only ``challenger``:
  values of different metrics are not compared; a champion without a value yields to the first
  version with one on its metric.

``models:/NAME@champion`` then names the best model so far wherever a model URI is taken
(``veilfed predict``, ``--init-from``, :func:`veilfed.model.load`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from veilfed import selection, tracking
from veilfed.errors import UsageError

CHAMPION, CHALLENGER = "champion", "challenger"
METRIC_TAG, VALUE_TAG, RUN_TAG = "veilfed.select_metric", "veilfed.value", "veilfed.run_id"


def register(summary: dict[str, Any], name: str, specs: Any = None) -> dict[str, Any]:
    """Register ``summary``'s best model as a version of ``name`` (module docstring); the
    summary's ``registry`` entry: ``{"name", "version", "alias", "champion"}``."""
    entry = summary.get("model") or {}
    uri = entry.get("best") or entry.get("final")
    if not uri:
        raise UsageError(f"--register {name}: the run logged no plaintext model to register")
    metric, value = entry.get("select_metric") or selection.LOSS, entry.get("best_value")
    client = MlflowClient(tracking_uri=summary.get("tracking_uri") or tracking.tracking_uri())
    _quiet()
    try:
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name)
        version = client.create_model_version(
            name, uri, run_id=summary.get("run_id"), model_id=uri.removeprefix("models:/")
        ).version
    except MlflowException as exc:
        reason = str(exc).splitlines()[0][:160]
        raise UsageError(f"--register {name}: MLflow refused it ({reason})") from None
    tags = {METRIC_TAG: metric, RUN_TAG: str(summary.get("run_id", ""))}
    if value is not None and math.isfinite(value):
        tags[VALUE_TAG] = repr(float(value))
    for key, text in tags.items():
        client.set_model_version_tag(name, version, key, text)
    alias = _aliases(client, name, version, metric, value, specs)
    champion = client.get_model_version_by_alias(name, CHAMPION).version
    return {"name": name, "version": int(version), "alias": alias, "champion": int(champion)}


def _aliases(
    client: MlflowClient, name: str, version: str, metric: str, value: Any, specs: Any
) -> str:
    """Set ``version``'s alias against the current champion; the alias it got."""
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    if champion is None:
        client.set_registered_model_alias(name, CHAMPION, version)
        return CHAMPION
    best = champion.tags.get(VALUE_TAG)
    valued = value is not None and math.isfinite(float(value))
    same = champion.tags.get(METRIC_TAG) == metric
    # A champion without a value (its run had none) yields to the first valued version.
    if valued and same and (best is None or _better(float(value), float(best), metric, specs)):
        client.set_registered_model_alias(name, CHAMPION, version)
        client.set_registered_model_alias(name, CHALLENGER, champion.version)
        return CHAMPION
    client.set_registered_model_alias(name, CHALLENGER, version)
    return CHALLENGER


def _better(value: float, best: float, metric: str, specs: Any) -> bool:
    if not math.isfinite(value):
        return False
    return value > best if selection.higher_is_better(metric, specs) else value < best


def _quiet() -> None:
    """MLflow logs each registration at INFO on stderr; the command reports it itself."""
    logging.getLogger("mlflow.tracking._model_registry.client").setLevel(logging.WARNING)
