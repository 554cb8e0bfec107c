"""The coordinator's best round and the models a federated run leaves behind.

:class:`BestRound` folds each round's federated evaluation into a
:class:`veilfed.selection.Selector` on the run config's ``[train] select_metric`` and keeps the
global model of the best round: its arrays, or under HE its *encrypted* aggregate (the
coordinator never holds a plaintext model after round 1, so it keeps the ciphertext and a key
holder decrypts it: ``veilfed.clients.export``). Its :meth:`BestRound.state` is the checkpoint's
``best`` entry, so a resumed run keeps its best round and its patience count; ``[train]
patience`` ends the run early.

:func:`log_models` runs once at the end of a run (``summary.finish``): without HE it logs the
final and the best global model to the run as MLflow PyTorch models ``model`` and
``model-best``; under HE it logs none, writes the encrypted final and best aggregate into the
run directory (:func:`write_encrypted`) and the summary's ``model`` entry says ``encrypted``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from veilfed.federation.settings import RunSettings
from veilfed.federation.weights import experiment
from veilfed.io import write_bytes_atomic, write_text_atomic
from veilfed.model import saved
from veilfed.selection import Selector

ENCRYPTED_DIR, INDEX_FILE = "model-encrypted", "index.json"  # under HE, in the run directory
log = logging.getLogger("veilfed.coordinator")


class BestRound:
    """The best round so far by the run's selection metric, and its global model."""

    def __init__(self, settings: RunSettings, state: dict[str, Any] | None) -> None:
        cfg = experiment(settings)
        train, specs = cfg.train, cfg.model.task_specs()
        self.selector = Selector.from_state(train.select_metric, train.patience, state, specs)
        self.arrays: dict[str, np.ndarray] | None = (state or {}).get("arrays")
        self.he_global: bytes | None = (state or {}).get("he_global")

    def update(
        self,
        rnd: int,
        metrics: dict[str, dict[str, float]],
        arrays: dict[str, np.ndarray],
        he_global: bytes | None,
    ) -> bool:
        """Fold in round ``rnd``'s evaluation of the global model (``arrays``, or under HE the
        encrypted aggregate ``he_global``; None before the first one: ``arrays`` are the public
        initial weights). True when it is the new best. The arrays are kept by reference: the
        round loop replaces the global model, it never writes into it."""
        improved = self.selector.update(rnd, metrics)
        if improved:
            self.arrays, self.he_global = arrays, he_global
        elif self.should_stop:
            sel = self.selector
            log.info(
                "round %d: %s has not improved on round %s for %d evaluations; stopping early",
                rnd,
                sel.metric,
                sel.best_round,
                sel.patience,
            )
        return improved

    @property
    def should_stop(self) -> bool:
        return self.selector.should_stop

    def state(self) -> dict[str, Any]:
        """The checkpoint's ``best`` entry: round, value, patience count and the model."""
        return {**self.selector.state(), "arrays": self.arrays, "he_global": self.he_global}


def write_encrypted(run_dir: str | Path, ckpt: Any, best: BestRound) -> Path:
    """Under HE: the final and the best encrypted global model for a key holder to export
    (``veilfed.clients.export``): ``<run>/model-encrypted/{final,best}.he`` (the aggregates'
    own wire format, no pickle) and ``index.json`` naming each one's round and file (``null``:
    that model is the public initial weights, no aggregate had been released)."""
    out = Path(run_dir) / ENCRYPTED_DIR
    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {}
    best_round = best.selector.best_round
    chosen = [
        ("final", ckpt.round, ckpt.he_global),
        ("best", best_round or ckpt.round, best.he_global if best_round else ckpt.he_global),
    ]
    for which, rnd, blob in chosen:
        name = f"{which}.he" if blob is not None else None
        if name is not None:
            write_bytes_atomic(out / name, bytes(blob))
        index[which] = {"round": rnd, "file": name}
    write_text_atomic(out / INDEX_FILE, json.dumps(index, indent=1, sort_keys=True) + "\n")
    return out


def log_models(settings: RunSettings, ckpt: Any, tracker: Any) -> dict[str, Any]:
    """The summary's ``model`` entry; logs ``model`` and ``model-best`` unless HE is on."""
    best = BestRound(settings, ckpt.best)
    entry: dict[str, Any] = {"final": None, "best": None, **best.selector.entry()}
    entry["encrypted"] = bool(settings.he.enabled)
    if settings.he.enabled:
        entry["encrypted_dir"] = str(write_encrypted(settings.run_dir, ckpt, best))
        return entry
    model_config = experiment(settings)  # its [model] and the [world] clip geometry
    entry["final"] = saved.log_model(
        tracker, ckpt.arrays, model_config, saved.FINAL_MODEL, step=ckpt.round
    )
    best_arrays = best.arrays if best.arrays is not None else ckpt.arrays
    best_round = best.selector.best_round or ckpt.round
    entry["best"] = saved.log_model(
        tracker, best_arrays, model_config, saved.BEST_MODEL, step=best_round
    )
    return entry
