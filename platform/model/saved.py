"""A trained model as an MLflow PyTorch model, and back: :func:`log_model`, :func:`load`.

Contract. A saved veilfed model is a directory holding

- ``state_dict.pt``: the weights, ``torch.save`` of ``{name: Tensor}`` (read back with
  ``weights_only=True``: loading runs no pickled code);
- ``model_config.json``: the resolved ``[model]`` section it was built from, which
  :func:`veilfed.config.parse_config` types and validates again before ``create_model``;
- ``input.json`` (when it was saved from an experiment config): the clip geometry it was trained
  on, ``{"frames", "height", "width", "fps", "sample_rate"}``, which prediction decodes any video
  to (:func:`read_input`; a model without it reads the synthetic world's defaults).

:func:`log_model` puts that directory into an MLflow *logged model* of the run (MLflow 3), next
to the ``pytorch`` flavor's own files (``MLmodel``, ``data/model.pth``), so MLflow shows it as a
PyTorch model and ``mlflow.pytorch.load_model`` works for whoever trusts the pickle; veilfed
itself never reads the pickle. The returned URI is ``models:/<model id>``; ``runs:/<run
id>/<name>`` names the same model. :func:`load` and :func:`read_state` accept either URI or a
local directory with the two files. The pickled copy is built fresh from the config and the
weights, so it carries no activations of the last batch the trained model saw.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow.artifacts
import numpy as np
import torch

from veilfed import tracking
from veilfed.data.synth import WorldConfig
from veilfed.errors import UsageError
from veilfed.model.core import MultiTaskModel, create_model

STATE_FILE = "state_dict.pt"
CONFIG_FILE = "model_config.json"
INPUT_FILE = "input.json"
FINAL_MODEL, BEST_MODEL = "model", "model-best"  # the logged model names of every run
INPUT_FIELDS = ("frames", "height", "width", "fps", "sample_rate")
MODEL_TYPE = "veilfed-multitask"
_HINT = (
    "pass a models:/<id> or runs:/<run id>/<name> URI from a run summary's `model` entry, "
    f"or a directory with {STATE_FILE} and {CONFIG_FILE}"
)


def model_table(model_config: Any) -> dict[str, Any]:
    """The ``[model]`` table of an ``ExperimentConfig``, its ``ModelSection`` or a table."""
    section = getattr(model_config, "model", model_config)
    if dataclasses.is_dataclass(section):
        return dataclasses.asdict(section)
    if isinstance(section, dict):
        return dict(section)
    raise TypeError(f"model_config: expected a [model] section, got {type(section).__name__}")


def cpu_state(model: Any) -> dict[str, torch.Tensor]:
    """Weights as detached CPU tensors: of a module (unwrapped from Opacus) or of a state
    ``{name: Tensor | np.ndarray}`` (the arrays form of ``veilfed.model.state``)."""
    if isinstance(model, torch.nn.Module):
        state = getattr(model, "_module", model).state_dict()
        return {k: v.detach().cpu().clone() for k, v in state.items()}
    return {
        k: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else torch.tensor(np.array(v))
        for k, v in model.items()
    }


def input_table(model_config: Any) -> dict[str, Any] | None:
    """The clip geometry of an ``ExperimentConfig`` (its ``[world]``); None for a bare section."""
    world = getattr(model_config, "world", None)
    if world is None or not hasattr(world, "world_config"):
        return None
    w = world.world_config()
    return {f: getattr(w, f) for f in INPUT_FIELDS}


def save_dir(path: str | Path, state: Any, model_config: Any) -> Path:
    """Write ``state_dict.pt``, ``model_config.json`` and, for an experiment config,
    ``input.json`` into ``path`` (created); returns it."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(cpu_state(state), out / STATE_FILE)
    text = json.dumps(model_table(model_config), indent=1)  # key order: task and head order
    (out / CONFIG_FILE).write_text(text + "\n", encoding="utf-8")
    geometry = input_table(model_config)
    if geometry is not None:
        (out / INPUT_FILE).write_text(json.dumps(geometry) + "\n", encoding="utf-8")
    return out


def build(model_config: Any, state: dict[str, torch.Tensor]) -> MultiTaskModel:
    """``create_model(model_config)`` with ``state`` loaded (strict), in eval mode."""
    model = create_model(model_config)
    model.load_state_dict(state)
    return model.eval()


def log_model(
    tracker_or_run_id: Any,
    model: Any,
    model_config: Any,
    name: str,
    step: int = 0,
) -> str:
    """Log ``model`` (a module, or its state as tensors or arrays) built from ``model_config``
    (an ``ExperimentConfig``, which also records the clip geometry, or its ``[model]`` section)
    to the run as the PyTorch logged model ``name``; returns its ``models:/<id>`` URI.

    ``tracker_or_run_id``: a :class:`veilfed.tracking.Tracker`, or a run id in the store
    :func:`veilfed.tracking.tracking_uri` names.
    """
    import mlflow.pytorch
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    if isinstance(tracker_or_run_id, str):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking.tracking_uri())
        run_id = tracker_or_run_id
    else:
        client, run_id = tracker_or_run_id.client, tracker_or_run_id.run_id
    state = cpu_state(model)
    clean = build(model_config, state)
    experiment_id = client.get_run(run_id).info.experiment_id
    logged = client.create_logged_model(
        experiment_id, name=name, source_run_id=run_id, model_type=MODEL_TYPE
    )
    meta = Model(
        artifact_path=logged.artifact_location,
        model_uuid=logged.model_id,
        run_id=run_id,
        model_id=logged.model_id,
    )
    quiet = logging.getLogger("mlflow.pytorch")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its pickle warning: veilfed loads the weights file instead
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        try:
            mlflow.pytorch.save_model(
                clean,
                str(path),
                mlflow_model=meta,
                serialization_format="pickle",
                # Inferring requirements loads the pickle in a subprocess; the weights need torch.
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
        finally:
            quiet.setLevel(level)
        save_dir(path, state, model_config)
        client.log_model_artifacts(logged.model_id, str(path))
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step)])
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return f"models:/{logged.model_id}"


def _files(source: str | Path, tmp: str) -> Path:
    """A local directory holding the saved model's two files (downloaded for a URI)."""
    text = str(source)
    if "://" not in text and not text.startswith(("models:/", "runs:/")):
        path = Path(text)
        if not path.is_dir():
            raise UsageError(f"{text}: no such model directory; {_HINT}")
        return path
    uri = tracking.tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise UsageError(
            f"{text}: no model in the MLflow store {uri} (no such store: set "
            f"MLFLOW_TRACKING_URI to the store the model was logged to); {_HINT}"
        )
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=text, dst_path=tmp, tracking_uri=uri
        )
    except Exception as exc:  # MLflow raises several types for a bad or unknown URI
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(
            f"{text}: no model in the MLflow store {uri} ({reason}); {_HINT}"
        ) from None
    return Path(local)


def _read(folder: Path, where: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    missing = [f for f in (STATE_FILE, CONFIG_FILE) if not (folder / f).is_file()]
    if missing:
        raise UsageError(f"{where}: not a veilfed model (no {', '.join(missing)}); {_HINT}")
    try:
        table = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt JSON or a file torch refuses to read as plain tensors
        raise UsageError(
            f"{where}: unreadable model files ({type(exc).__name__}); {_HINT}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{where}: {STATE_FILE} is not a {{name: tensor}} state dict; {_HINT}")
    return table, state


def read_state(source: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a saved model: an MLflow URI (``models:/``, ``runs:/``) or a directory."""
    with tempfile.TemporaryDirectory() as tmp:
        return _read(_files(source, tmp), str(source))[1]


def read_config(source: str | Path) -> Any:
    """The ``ModelSection`` a saved model was built from (typed and validated)."""
    with tempfile.TemporaryDirectory() as tmp:
        return _config(_read(_files(source, tmp), str(source))[0], str(source))


def _config(table: dict[str, Any], where: str) -> Any:
    from veilfed.config import parse_config

    return parse_config({"model": table}, f"{where}/{CONFIG_FILE}").model


def load(source: str | Path) -> MultiTaskModel:
    """The model a URI (``models:/<id>``, ``runs:/<run id>/<name>``) or a directory holds,
    rebuilt with ``create_model`` and its weights loaded; in eval mode."""
    return load_with_input(source)[0]


def load_with_input(source: str | Path) -> tuple[MultiTaskModel, Any]:
    """(:func:`load`'s model, the ``WorldConfig`` geometry it was trained on: ``input.json``, or
    the synthetic world's defaults for a model saved without it)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = _files(source, tmp)
        table, state = _read(folder, str(source))
        geometry = _input(folder, str(source))
    model_config = _config(table, str(source))
    try:
        world = WorldConfig(**geometry)
    except (TypeError, UsageError) as exc:
        reason = f"{INPUT_FILE} is not a clip geometry ({exc})"
        raise UsageError(f"{source}: {reason}; {_HINT}") from None
    return _build(source, model_config, state), world


def _input(folder: Path, where: str) -> dict[str, Any]:
    path = folder / INPUT_FILE
    if not path.is_file():
        return {}
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise UsageError(f"{where}: {INPUT_FILE} is not JSON; {_HINT}") from None
    if not isinstance(table, dict) or set(table) - set(INPUT_FIELDS):
        raise UsageError(f"{where}: {INPUT_FILE} holds only {', '.join(INPUT_FIELDS)}; {_HINT}")
    return table


def _build(source: str | Path, model_config: Any, state: dict[str, torch.Tensor]) -> Any:
    try:
        return build(model_config, state)
    except RuntimeError as exc:  # load_state_dict: names or shapes differ from the config's model
        first = str(exc).splitlines()[0]
        raise UsageError(f"{source}: weights do not fit {CONFIG_FILE} ({first}); {_HINT}") from None
