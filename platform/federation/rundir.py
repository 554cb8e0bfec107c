"""A simulation's run directory: the files the run setup writes and virtual clients read.

On real nodes none of this is shared: a node brings its own shard, state and signing key, and
the coordinator's run directory stays on its machine. In a simulation the run setup prepares
what each virtual client needs in ``<run_dir>``:

=========================  ==========================================================
``settings.json``          the :class:`~veilfed.federation.settings.RunSettings`
``shards.json``            client id -> its clip ids in the store (train + held-out)
``missing.json``           client id -> the modalities it lacks (absent: none)
``clients/<client id>/``   the virtual client's node state; its report signing key is
                           ``signing.key`` there, provisioned by the run setup
=========================  ==========================================================
"""

from __future__ import annotations

import json
from pathlib import Path

from veilfed.errors import UsageError
from veilfed.io import write_text_atomic

RUNS_DIR = "runs"  # default parent of run directories: <runs>/<MLflow run id>/
SHARDS_FILE = "shards.json"
MISSING_FILE = "missing.json"  # client id -> modalities it lacks (partition.missing)
CLIENTS_DIR = "clients"
SIGNING_KEY_FILE = "signing.key"  # in a client's state directory (real node or virtual)


def client_dir(run_dir: str | Path, client_id: str) -> Path:
    """A virtual client's state directory inside the run directory."""
    return Path(run_dir) / CLIENTS_DIR / client_id


def save_shards(
    run_dir: str | Path,
    shards: dict[str, list[str]],
    missing: dict[str, list[str]] | None = None,
) -> None:
    write_text_atomic(Path(run_dir) / SHARDS_FILE, json.dumps(shards, sort_keys=True))
    write_text_atomic(Path(run_dir) / MISSING_FILE, json.dumps(missing or {}, sort_keys=True))


def load_missing(run_dir: str | Path) -> dict[str, list[str]]:
    """Modalities each client lacks; none when the run has no ``missing.json``."""
    path = Path(run_dir) / MISSING_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: cannot read client modalities ({exc})") from None


def load_shards(run_dir: str | Path) -> dict[str, list[str]]:
    path = Path(run_dir) / SHARDS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: cannot read client shards ({exc})") from None
