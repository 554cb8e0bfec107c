"""MLflow helpers: one run per training/simulation, metrics per round, never left "RUNNING".

Everything goes through :class:`mlflow.tracking.MlflowClient` with an explicit run id (no fluent
global state), because the Flower ServerApp runs in a worker thread and several runs may be open
in one process in tests. The default store is an SQLite file in the working directory with its
artifacts next to it; ``MLFLOW_TRACKING_URI`` points elsewhere (e.g. a tracking server).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from veilfed.errors import UsageError

DEFAULT_DB = "mlflow.db"
_MAX_PARAM_CHARS = 6000  # MLflow's limit for one param value
_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else an absolute ``sqlite:///<cwd>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{Path.cwd().resolve() / DEFAULT_DB}"


def _artifact_root(uri: str) -> str | None:
    """Artifacts of a local SQLite store live next to the DB file (not in the process cwd)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
    return None


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"a.b": "value"}`` strings within MLflow's value limit."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[name] = text[:_MAX_PARAM_CHARS]
    return out


class Tracker:
    """An open MLflow run; use :func:`start_run` or :func:`resume_run` to get one."""

    def __init__(self, client: Any, run_id: str, uri: str) -> None:
        self.client = client
        self.run_id = run_id
        self.tracking_uri = uri

    @property
    def experiment_id(self) -> str:
        return self.client.get_run(self.run_id).info.experiment_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten(params)
        items = [Param(k, v) for k, v in sorted(flat.items())]
        for i in range(0, len(items), 90):  # MLflow caps params per batch at 100
            self.client.log_batch(self.run_id, params=items[i : i + 90])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log finite metrics at ``step`` (non-finite values are skipped: MLflow rejects NaN)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, int(step))
            for k, v in sorted(metrics.items())
            if v is not None and math.isfinite(float(v))
        ]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + _BATCH])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        """Upload every file under ``local_dir`` in one call (replacing same-named artifacts)."""
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_json(self, obj: Any, artifact_file: str) -> None:
        self.log_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            figure.savefig(path, dpi=100, bbox_inches="tight")
            parent = str(Path(artifact_file).parent)
            self.log_artifact(path, None if parent == "." else parent)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def status(self) -> str:
        return self.client.get_run(self.run_id).info.status

    @contextmanager
    def failing_on_error(self) -> Iterator[Tracker]:
        """Mark the run FAILED if the block raises (including Ctrl-C), then re-raise."""
        try:
            yield self
        except BaseException:
            self.finish("FAILED")
            raise


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(tracking_uri=uri)
    except Exception as exc:  # MLflow raises several types for a bad URI
        raise UsageError(
            f"MLFLOW_TRACKING_URI={uri!r}: cannot open tracking store ({exc})"
        ) from None


def start_run(
    experiment: str,
    params: Mapping[str, Any] | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Tracker:
    """Create ``experiment`` if needed and open a new run with ``params`` logged."""
    uri = tracking_uri()
    client = _client(uri)
    try:
        exp = client.get_experiment_by_name(experiment)
        exp_id = (
            exp.experiment_id
            if exp is not None
            else client.create_experiment(experiment, artifact_location=_artifact_root(uri))
        )
        run = client.create_run(exp_id, run_name=run_name, tags=dict(tags or {}))
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"MLflow tracking store {uri}: cannot create a run ({exc})") from None
    tracker = Tracker(client, run.info.run_id, uri)
    if params:
        with tracker.failing_on_error():
            tracker.log_params(params)
    return tracker


def resume_run(run_id: str) -> Tracker:
    """Reopen an existing run (e.g. one a crash left FAILED or RUNNING) to continue logging."""
    uri = tracking_uri()
    client = _client(uri)
    try:
        client.get_run(run_id)
    except Exception:
        raise UsageError(
            f"--resume {run_id}: no such MLflow run in {uri}; pass a run id from this store"
        ) from None
    client.update_run(run_id, status="RUNNING")
    return Tracker(client, run_id, uri)
