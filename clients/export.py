"""A key holder exports an HE run's model: decrypt the final and best aggregate, log them.

Under HE the coordinator holds only encrypted aggregates and never decrypts; at the end of the
run it writes the final and the best one into its run directory (``model-encrypted/``: the
aggregates' own wire format and an ``index.json``, no pickle) beside ``settings.json``. A holder
of the clients' HE secret context decrypts each exactly as a client decrypts the global model
before a round (:func:`veilfed.clients.secure.decrypt_global`: this run's contributors only, at
least ``min_contributors`` of them), rebuilds the model from the run's ``[model]`` config and
logs it to the run's MLflow as ``model`` and ``model-best``. In a simulation every party is
this machine, so ``veilfed simulate --he`` runs this step as its first client after the run; a
real deployment runs ``veilfed node export-model`` on a node with the run directory's
``settings.json`` and ``model-encrypted/`` copied over.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from veilfed.clients.secure import decrypt_global
from veilfed.errors import UsageError
from veilfed.federation.settings import SETTINGS_FILE, RunSettings
from veilfed.federation.weights import experiment, initial_arrays
from veilfed.model.saved import BEST_MODEL, FINAL_MODEL, log_model
from veilfed.tracking import Tracker

ENCRYPTED_DIR, INDEX_FILE = "model-encrypted", "index.json"  # as the coordinator writes them
LOGGED = {"final": FINAL_MODEL, "best": BEST_MODEL}


def _index(run: Path) -> dict[str, dict[str, Any]]:
    path = run / ENCRYPTED_DIR / INDEX_FILE
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(
            f"{path}: no encrypted model; export after the HE run has finished, from its run "
            f"directory (or a copy of its {SETTINGS_FILE} and {ENCRYPTED_DIR}/)"
        ) from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable ({exc}); copy it again from the run") from None
    ok = isinstance(index, dict) and all(
        isinstance(index.get(k), dict)
        and isinstance(index[k].get("round"), int)
        and (index[k].get("file") is None or index[k]["file"] in ("final.he", "best.he"))
        for k in LOGGED
    )
    if not ok:
        raise UsageError(f"{path}: not a veilfed encrypted-model index; copy it again from the run")
    return index


def decrypt_models(
    run_dir: str | Path, secret_path: str | Path, min_contributors: int | None = None
) -> tuple[RunSettings, dict[str, tuple[int, dict[str, Any]]]]:
    """The run's settings and ``{"final"|"best": (round, arrays)}``, decrypted with the secret
    context (``CheckFailed`` when a client would refuse an aggregate). ``min_contributors``
    defaults to the run's ``[he] min_contributors``."""
    run = Path(run_dir)
    settings = RunSettings.load(run)
    if not settings.he.enabled:
        raise UsageError(
            f"{run}: run {settings.run_id} did not use HE; its summary names its models already"
        )
    floor = settings.he.min_contributors if min_contributors is None else min_contributors
    out: dict[str, tuple[int, dict[str, Any]]] = {}
    for which, item in _index(run).items():
        if which not in LOGGED:
            continue
        if item["file"] is None:  # no aggregate released before that round: the seeded start
            arrays = initial_arrays(settings)
        else:
            blob = (run / ENCRYPTED_DIR / item["file"]).read_bytes()
            arrays, _ = decrypt_global(settings, str(secret_path), blob, None, floor)
        out[which] = (item["round"], arrays)
    return settings, out


def export_model(
    run_dir: str | Path,
    secret_path: str | Path,
    min_contributors: int | None = None,
    tracking_uri: str | None = None,
) -> dict[str, str]:
    """Decrypt the run's final and best model and log them to its MLflow run (the store its
    settings name, or ``tracking_uri``); ``{"final": URI, "best": URI}``."""
    from mlflow.tracking import MlflowClient

    settings, models = decrypt_models(run_dir, secret_path, min_contributors)
    uri = tracking_uri or settings.tracking_uri
    tracker = Tracker(MlflowClient(tracking_uri=uri), settings.run_id, uri)
    model_config = experiment(settings)  # its [model] and the [world] clip geometry
    return {
        which: log_model(tracker, arrays, model_config, LOGGED[which], step=rnd)
        for which, (rnd, arrays) in models.items()
    }
