"""The README's "Your own videos" walkthrough through the real console script: a folder of MP4s
and a labels CSV naming the owner's own classes -> encrypted store -> a trained, logged model whose
MLflow metrics are named by those classes' task; a bad labels file is one line, exit 2, and the
store is as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from testkit.videos import tree_digest, write_class_videos

from veilfed.crypto.keys import write_key_file
from veilfed.model import load

VEILFED = str(Path(sys.executable).parent / "veilfed")

CONFIG = """
name = "scenes"

[world]
frames = 8
size = 32

[model]
dim = 32
pixel_dim = 32

[model.tasks.scene]
kind = "classification"
classes = ["cartoon", "street"]

[model.tasks.restoration]

[train]
optimizer = "adam"
batch_size = 4
lr = 0.003
epochs = 2

[privacy]
enabled = true
noise_multiplier = 0.8
max_grad_norm = 1.0
delta = 1e-5
"""


def run(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | (env or {})
    return subprocess.run(
        [VEILFED, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd, env=env
    )


def ingest(source: str, *extra: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``veilfed data ingest SOURCE`` into ``store`` with the owner's key and config."""
    store = ("--store", "store", "--key-file", "store.key", "--config", "scenes.toml")
    return run("data", "ingest", source, *store, *extra, cwd=cwd)


@pytest.fixture
def owner(tmp_path: Path) -> Path:
    """A data owner's folder: videos/, labels.csv, scenes.toml, store.key."""
    labels = write_class_videos(tmp_path / "videos", per_class=5)
    rows = [f"{name},{cls}" for name, cls in sorted(labels.items())]
    (tmp_path / "labels.csv").write_text("file,scene\n" + "\n".join(rows) + "\n")
    (tmp_path / "scenes.toml").write_text(CONFIG)
    write_key_file(tmp_path / "store.key")
    return tmp_path


@pytest.mark.integration
def test_own_classes_from_labels_csv_to_a_logged_model(owner: Path) -> None:
    ingested = ingest("videos", "--labels", "labels.csv", "--json", cwd=owner)
    assert ingested.returncode == 0, ingested.stderr
    assert json.loads(ingested.stdout)["ingested"] == 10
    train = run(
        "train", "--config", "scenes.toml", "--store", "store", "--key-file", "store.key",
        "--summary-json", "summary.json", "--register", "scenes",
        cwd=owner,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    summary = json.loads((owner / "summary.json").read_text())
    assert set(summary["metrics"]) == {"scene", "restoration"}
    assert summary["primary"] == {"scene": "accuracy", "restoration": "psnr_set"}
    assert "accuracy" in summary["baselines"]["scene"]  # the majority class of the training split
    assert summary["clients"]["centralized"]["epsilon"] > 0
    assert "scene" in train.stdout

    mlflow_run = MlflowClient(summary["tracking_uri"]).get_run(summary["run_id"])
    assert "eval/scene/accuracy" in mlflow_run.data.metrics
    assert "baseline/scene/accuracy" in mlflow_run.data.metrics
    for name in ("cartoon", "street"):  # the owner's classes name their own metrics
        assert f"eval/scene/recall_{name}" in mlflow_run.data.metrics
        assert f"baseline/scene/recall_{name}" in mlflow_run.data.metrics
    params = mlflow_run.data.params
    assert int(params["data.train_clips"]) + int(params["data.test_clips"]) < 10  # no clip ids
    assert json.loads(params["model.tasks.scene.classes"]) == ["cartoon", "street"]
    model = load(summary["model"]["final"])
    assert model.task_specs["scene"].classes == ("cartoon", "street")
    # Registered as the first version, the champion; a prediction through the alias names one
    # of the owner's classes for a video of the folder.
    assert summary["registry"] == {
        "name": "scenes",
        "version": 1,
        "alias": "champion",
        "champion": 1,
    }
    assert "models:/scenes@champion" in train.stdout
    env = {"MLFLOW_TRACKING_URI": summary["tracking_uri"]}
    predicted = run("predict", "models:/scenes@champion", "videos/street-00.mp4", "--json",
                    "--tasks", "scene", cwd=owner, env=env)  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr
    result = json.loads(predicted.stdout)
    assert result["video"]["scene"]["class"] in ("cartoon", "street")


@pytest.mark.slow  # 18 s; tests/data/test_own_videos.py checks the same refusal in process
def test_an_undeclared_class_is_one_line_exit_2_and_the_store_unchanged(owner: Path) -> None:
    first = ingest("videos/cartoon-00.mp4", cwd=owner)
    assert first.returncode == 0, first.stderr
    before = tree_digest(owner / "store")
    (owner / "labels.csv").write_text("file,scene\nstreet-00.mp4,anime\n")
    res = ingest("videos", "--labels", "labels.csv", cwd=owner)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "labels.csv: line 2 (street-00.mp4)" in lines[0]
    assert "'anime' is not a class of task 'scene'" in lines[0]
    assert tree_digest(owner / "store") == before
