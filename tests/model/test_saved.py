"""A saved model: MLflow PyTorch logged model or local directory, rebuilt without unpickling."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from veilfed import tracking
from veilfed.config import load_config
from veilfed.errors import UsageError
from veilfed.model import create_model, load, log_model, read_state
from veilfed.model.saved import CONFIG_FILE, STATE_FILE, save_dir

TINY = Path(__file__).resolve().parents[2] / "experiments" / "tiny.toml"


@pytest.fixture(scope="module")
def cfg():
    return load_config(TINY, overrides={"model": {"dim": 16, "pixel_dim": 16}})


@pytest.fixture
def model(cfg):
    torch.manual_seed(3)
    return create_model(cfg)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_directory_round_trip_rebuilds_the_same_model(tmp_path, cfg, model):
    save_dir(tmp_path / "m", model, cfg)
    back = load(tmp_path / "m")
    _same(back.state_dict(), model.state_dict())
    assert back.tasks == model.tasks and not back.training
    _same(read_state(tmp_path / "m"), model.state_dict())


def test_logged_model_is_a_pytorch_model_and_loads_by_either_uri(cfg, model):
    import mlflow.models

    tracker = tracking.start_run("saved")
    uri = log_model(tracker, model, cfg, "model")
    assert uri.startswith("models:/")
    info = mlflow.models.get_model_info(uri)
    assert "pytorch" in info.flavors
    client = tracker.client
    logged = client.get_logged_model(uri.removeprefix("models:/"))
    assert logged.source_run_id == tracker.run_id and logged.name == "model"
    files = {f.path for f in client.list_logged_model_artifacts(logged.model_id)}
    assert {STATE_FILE, CONFIG_FILE, "MLmodel"} <= files
    _same(load(uri).state_dict(), model.state_dict())
    _same(read_state(f"runs:/{tracker.run_id}/model"), model.state_dict())
    # a run id alone names the run in the default store
    uri2 = log_model(tracker.run_id, model.state_dict(), cfg.model, "again")
    _same(read_state(uri2), model.state_dict())


def test_logged_pickle_carries_no_activations(cfg, model):
    """The pytorch flavor's pickle is a fresh model: no inputs of the last forward inside."""
    model._inputs = [torch.full((2, 3), 7.0)]  # what a forward pass leaves behind
    tracker = tracking.start_run("saved")
    uri = log_model(tracker, model, cfg, "model")
    import mlflow.pytorch

    mlflow_copy = mlflow.pytorch.load_model(uri)  # the trusting path veilfed itself never takes
    assert not getattr(mlflow_copy, "_inputs", None)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_load_runs_no_pickled_code(tmp_path, cfg, model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = save_dir(tmp_path / "evil", model, cfg)
    torch.save({"w": _Boom()}, folder / STATE_FILE)
    with pytest.raises(UsageError, match="unreadable model files"):
        load(folder)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("models:/m-0123456789abcdef", "models:/m-0123456789abcdef: no model in the MLflow store"),
        ("runs:/0123456789abcdef/model", "runs:/0123456789abcdef/model: no model"),
        ("/no/such/dir", "/no/such/dir: no such model directory"),
    ],
)
def test_bad_source_is_one_line_naming_it(source, message):
    with pytest.raises(UsageError) as err:
        load(source)
    text = str(err.value)
    assert message in text and "\n" not in text and "models:/<id>" in text


def test_missing_or_mismatched_files_are_one_line(tmp_path, cfg, model):
    folder = save_dir(tmp_path / "m", model, cfg)
    (folder / CONFIG_FILE).unlink()
    with pytest.raises(UsageError, match=f"not a veilfed model \\(no {CONFIG_FILE}\\)"):
        load(folder)
    other = load_config(TINY, overrides={"model": {"dim": 8, "pixel_dim": 8}})
    save_dir(folder, model, other)  # weights of dim 16 under a dim 8 config
    with pytest.raises(UsageError, match="weights do not fit model_config.json") as err:
        load(folder)
    assert "\n" not in str(err.value)
