"""Coordinator checkpoint, written atomically after every round so a killed run can resume.

It holds what the coordinator alone knows: the global model (with HE: the initial weights and
the latest *encrypted* aggregate, never a plaintext model), the best round's model (likewise
encrypted under HE), the strategy's state (FedOpt
moments, adaptive clip norm), the exhausted clients and the per-round history that becomes
MLflow metrics and summary.json. Client accountants live on the nodes (``clients/<id>/``), one
snapshot per round, so resuming re-runs only the unfinished round.

No random state is kept: sampling draws from an RNG derived from (seed, round), so a resumed
run samples what the uninterrupted one would have, and DP noise draws from OS entropy
(``veilfed.privacy.noise``), so a re-run round never repeats the noise of a release. Fields a
checkpoint file has and :class:`Checkpoint` does not (``rng`` in files that stored the global
RNG states) are dropped on load.

The file is a pickle written by this coordinator into its own run directory; it is never
accepted from anyone else (same trust as the run directory itself).
"""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from veilfed.errors import UsageError
from veilfed.io import write_bytes_atomic

FILE = "checkpoint.pkl"
VERSION = 1


@dataclass
class Checkpoint:
    round: int
    arrays: dict[str, np.ndarray]
    strategy: list[dict[str, Any]]
    history: list[dict[str, Any]] = field(default_factory=list)
    clients: dict[str, dict[str, Any]] = field(default_factory=dict)
    exhausted: dict[str, str] = field(default_factory=dict)
    version: int = VERSION
    he_global: bytes | None = None  # HE: the latest encrypted aggregate (the global model)
    # The best round so far (``coordinator.best.BestRound.state``): round, value, evaluations
    # since it, and its global model: ``arrays``, or under HE its encrypted aggregate
    # ``he_global`` (``arrays`` then the public initial weights when the best is round 0's).
    best: dict[str, Any] | None = None


_FIELDS = {f.name for f in dataclasses.fields(Checkpoint)}


def save(run_dir: str | Path, ckpt: Checkpoint) -> Path:
    path = Path(run_dir) / FILE
    write_bytes_atomic(path, pickle.dumps(ckpt, protocol=pickle.HIGHEST_PROTOCOL))
    return path


def load(run_dir: str | Path) -> Checkpoint | None:
    """The last completed round's checkpoint, or None before the first round finished."""
    path = Path(run_dir) / FILE
    if not path.exists():
        return None
    try:
        ckpt = pickle.loads(path.read_bytes())
    except Exception as exc:
        raise UsageError(f"{path}: unreadable checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, Checkpoint) or getattr(ckpt, "version", None) != VERSION:
        raise UsageError(f"{path}: not a version {VERSION} veilfed checkpoint")
    for name in set(vars(ckpt)) - _FIELDS:
        delattr(ckpt, name)
    return ckpt
