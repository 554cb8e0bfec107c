"""`veilfed predict` through the real console script: JSON lines per source, a table otherwise;
every bad source (not a video, truncated, no frames) one line naming it while the rest go on;
a model that does not exist or tasks it lacks: one line, exit 2, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from testkit.model import save_every_kind_model
from testkit.videos import class_clip, tone_clip
from typer.testing import CliRunner

from veilfed.cli.main import app

VEILFED = str(Path(sys.executable).parent / "veilfed")


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{cwd / 'mlflow.db'}"
    return subprocess.run(
        [VEILFED, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd, env=env
    )


def _audio_only(path: Path) -> None:
    """An MP4 holding an audio track and no video frames."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), "fltp", "mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("predict")
    save_every_kind_model(root / "model")
    (root / "long.mp4").write_bytes(tone_clip(2.5, (1.0, 1.5)))
    good = class_clip("street", 3, frames=8)
    (root / "short.mp4").write_bytes(good)
    (root / "notes.mp4").write_text("these are not video bytes\n")
    (root / "cut.mp4").write_bytes(good[: len(good) // 3])
    _audio_only(root / "silent.mp4")
    return root


def test_json_lines_per_source(folder: Path) -> None:
    res = run("predict", "model", "long.mp4", "short.mp4", "--json", "--tasks", "scene", cwd=folder)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["source"] for r in lines] == ["long.mp4", "short.mp4"]
    assert len(lines[0]["windows"]) == 3 and set(lines[0]["video"]) == {"scene"}
    assert set(lines[1]["windows"][0]["tasks"]) == {"scene"}


def test_a_table_and_files_with_out(folder: Path, tmp_path: Path) -> None:
    res = run(
        "predict", folder / "model", folder / "short.mp4", "--out", tmp_path / "out",
        "--question", "what moves?", cwd=folder,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "scene" in res.stdout and "what moves? ->" in res.stdout
    assert (tmp_path / "out" / "short" / "window000-detection.png").is_file()


def test_each_bad_source_is_one_line_and_the_others_go_on(folder: Path) -> None:
    bad = {
        "notes.mp4": "notes.mp4: ",
        "cut.mp4": "cut.mp4: ",
        "silent.mp4": "silent.mp4: ",
        "absent.mp4": "absent.mp4: cannot read",
    }
    res = run("predict", "model", *bad, "short.mp4", "--json", "--tasks", "scene", cwd=folder)
    assert res.returncode == 1
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == len(bad) + 1, res.stderr
    for line, what in zip(errors, bad.values(), strict=False):
        assert what in line
    assert f"{len(bad)} of {len(bad) + 1} sources could not be predicted" in errors[-1]
    assert "Traceback" not in res.stderr
    assert [json.loads(line)["source"] for line in res.stdout.splitlines()] == ["short.mp4"]


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (("models:/m-0000", "short.mp4"), "models:/m-0000: no model in the MLflow store"),
        (("nowhere", "short.mp4"), "nowhere: no such model directory"),
        (("model", "short.mp4", "--tasks", "mood"), "the model has no task 'mood'"),
        (("model", "short.mp4", "--store", "s"), "--store and --key-file go together"),
        (("model", "short.mp4", "--device", "gpu"), "--device 'gpu': use one of auto, cpu, cuda"),
        (
            ("model", "short.mp4", "--runtime", "onnxruntime", "--device", "cuda"),
            "--device cuda: ONNX Runtime runs on the CPU here",
        ),
    ],
)
def test_a_bad_call_is_one_line_exit_2(folder: Path, args, what: str, monkeypatch) -> None:
    """In process (the command function the console script runs), for speed."""
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    res = CliRunner().invoke(app, ["predict", *args])
    assert res.exit_code == 2, res.output
    assert res.stderr.count("\n") == 1 and what in res.stderr, res.stderr


def test_stream_prints_a_line_per_window_and_a_summary(folder: Path) -> None:
    res = run("predict", "model", "long.mp4", "--stream", "--tasks", "moderation",
              "--max-windows", "1", cwd=folder)  # fmt: skip
    assert res.returncode == 0, res.stderr
    window, closing = (json.loads(line) for line in res.stdout.splitlines())
    assert window["index"] == 0 and "flag" in window["tasks"]["moderation"]
    assert window["latency_ms"] > 0
    assert closing["summary"]["windows"] == 1 and closing["summary"]["dropped"] == 0


def test_store_clips_are_never_written_in_the_clear(folder: Path, monkeypatch) -> None:
    monkeypatch.chdir(folder)
    res = CliRunner().invoke(
        app, ["predict", "model", "clip-1", "--store", "s", "--key-file", "k", "--out", "o"]
    )
    assert res.exit_code == 2 and "--out writes frames of the video in the clear" in res.stderr
    assert not (folder / "o").exists()
