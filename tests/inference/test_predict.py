"""Prediction on real encoded videos (veilfed.inference): windows of one clip span with their
times, a result for every head kind, video-level results that are the windows' mean, the same
answer from a file and from its encrypted store clip, files under --out, and bad options refused
with one line."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from testkit.model import EVERY_KIND

from veilfed.crypto.keys import FernetKey
from veilfed.data import video
from veilfed.data.ingest import ingest_to
from veilfed.data.store import EncryptedStore
from veilfed.errors import UsageError
from veilfed.inference import Predictor, model_source, read_file, store_input
from veilfed.inference.readers import CLIP_KINDS, READERS
from veilfed.model.saved import load_with_input
from veilfed.tasks import KINDS


@pytest.fixture(scope="module")
def loaded(saved_model: Path):
    return load_with_input(saved_model)


def test_the_saved_geometry_is_what_prediction_decodes_to(loaded) -> None:
    _, world = loaded
    assert (world.frames, world.height, world.width, world.fps) == (8, 32, 32, 8)
    assert world.clip_seconds == 1.0


def test_every_kind_has_a_reader() -> None:
    assert set(READERS) == set(KINDS)


def test_a_long_video_runs_in_windows_with_a_result_per_task(loaded, videos) -> None:
    model, world = loaded
    result = Predictor(model, world, questions=["what moves?"]).run(read_file(videos["long"]))
    spans = [(w["start"], w["end"]) for w in result["windows"]]
    assert spans == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (2.5, 3.5)]  # last shifted to the end
    for window in result["windows"]:
        assert set(window["tasks"]) == set(EVERY_KIND)
        for frame in window["tasks"]["detection"]["frames"]:
            assert window["start"] <= frame["t"] < window["end"]
        assert len(window["tasks"]["pose"]["frames"]) == world.frames
        scene = window["tasks"]["scene"]
        assert scene["class"] in ("cartoon", "street")
        assert sum(c["probability"] for c in scene["top"]) == pytest.approx(1.0, abs=1e-3)
        (answer,) = window["tasks"]["qa"]["answers"]
        assert answer["question"] == "what moves?"
    # The video-level class probabilities are the mean of the windows'.
    street = [
        next(c["probability"] for c in w["tasks"]["scene"]["top"] if c["class"] == "street")
        for w in result["windows"]
    ]
    video_street = next(
        c["probability"] for c in result["video"]["scene"]["top"] if c["class"] == "street"
    )
    assert video_street == pytest.approx(sum(street) / len(street), abs=1e-3)
    clip_level = {t for t, s in model.task_specs.items() if s.kind in CLIP_KINDS}
    assert clip_level | {"summary"} == set(result["video"])
    assert result["video"]["summary"]["keyframes"]


def test_a_store_clip_gives_the_result_its_file_gives(loaded, videos, tmp_path) -> None:
    model, world = loaded
    key = FernetKey.generate()
    ingest_to(tmp_path / "s", key, [videos["long"]])
    store = EncryptedStore.open(tmp_path / "s", key)
    predictor = Predictor(model, world, tasks=["scene", "moderation"])
    from_store = predictor.run(store_input(store, "long"))
    from_file = predictor.run(read_file(videos["long"]))
    assert from_store["windows"] == from_file["windows"]
    assert from_store["video"] == from_file["video"]
    with pytest.raises(UsageError, match="no clip 'nobody' in this store"):
        store_input(store, "nobody")


def test_out_holds_overlays_and_movies_and_is_never_overwritten(loaded, videos, tmp_path) -> None:
    model, world = loaded
    predictor = Predictor(model, world, out=tmp_path / "out")
    result = predictor.run(read_file(videos["short"]))
    assert len(result["windows"]) == 1
    files = {Path(f).name: Path(f) for f in result["files"]}
    for task in ("detection", "segmentation", "pose"):
        image = Image.open(io.BytesIO(files[f"window000-{task}.png"].read_bytes()))
        assert min(image.size) >= 256
    restored = video.probe(files["window000-restoration.mp4"])
    assert restored["frames"] == world.frames
    assert video.probe(files["window000-next_frame.mp4"])["frames"] == 4
    assert "summary-summary.mp4" in files
    before = {n: p.read_bytes() for n, p in files.items()}
    with pytest.raises(UsageError, match="already exists"):
        predictor.run(read_file(videos["short"]))
    assert {n: p.read_bytes() for n, p in files.items()} == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tasks": ["nope"]}, "--tasks: the model has no task 'nope'; its tasks: "),
        ({"tasks": ["scene"], "questions": ["why?"]}, "--question: the model .* has no qa task"),
        ({"stride": 0.0}, "--stride 0: give a positive number"),
        ({"stride": float("inf")}, "--stride inf: give a positive number"),
        ({"questions": ["what is the zyzzyva doing?"]}, "tokens, the model reads 10; shorten"),
        (
            {"questions": [f"q{i}?" for i in range(9)]},
            "answers 4 questions per clip; ask at most 4",
        ),
    ],
)
def test_bad_options_are_one_line(loaded, kwargs, message) -> None:
    model, world = loaded
    with pytest.raises(UsageError, match=message) as err:
        Predictor(model, world, **kwargs)
    assert "\n" not in str(err.value)


def test_any_frame_rate_and_trailing_audio(loaded, tmp_path) -> None:
    """A 5 fps source is read at the model's 8 fps (frames repeat at their times); a video
    whose audio runs past its last frame is as long as its frames."""
    model, world = loaded
    frames = np.full((15, 32, 32, 3), 40, np.uint8)
    frames[::5] = 200  # a flash at 0, 1 and 2 s
    (tmp_path / "f5.mp4").write_bytes(video.encode_mp4(frames, None, 5))
    slow = Predictor(model, world, tasks=["scene"]).run(read_file(tmp_path / "f5.mp4"))
    assert [(w["start"], w["end"]) for w in slow["windows"]] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]
    eight = np.full((8, 32, 32, 3), 90, np.uint8)
    sound = np.zeros(int(1.2 * 16000), np.float32)
    (tmp_path / "tail.mp4").write_bytes(video.encode_mp4(eight, sound, 8))
    tail = Predictor(model, world, tasks=["scene"]).run(read_file(tmp_path / "tail.mp4"))
    assert tail["duration_s"] == 1.0 and len(tail["windows"]) == 1


def test_overlapping_windows_give_each_keyframe_once(loaded, videos, tmp_path) -> None:
    model, world = loaded
    predictor = Predictor(model, world, tasks=["summary"], stride=0.5, out=tmp_path / "o")
    result = predictor.run(read_file(videos["long"]))
    keys = result["video"]["summary"]["keyframes"]
    assert len(result["windows"]) == 6 and len(keys) == len(set(keys))
    # A second source of the same name gets a folder of its own, never the first one's.
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "long.mp4").write_bytes(videos["long"].read_bytes())
    again = predictor.run(read_file(tmp_path / "sub" / "long.mp4"))
    assert {Path(f).parent.name for f in result["files"]} == {"long"}
    assert {Path(f).parent.name for f in again["files"]} == {"long-2"}


def test_a_run_id_names_its_final_model(tmp_path) -> None:
    run_id = "0123456789abcdef0123456789abcdef"
    assert model_source(run_id) == f"runs:/{run_id}/model"
    assert model_source("models:/m-1") == "models:/m-1"
    (tmp_path / run_id).mkdir()
    assert model_source(str(tmp_path / run_id)) == str(tmp_path / run_id)


@pytest.mark.slow  # 16 s: ONNX parity stays in test_model_export
def test_onnxruntime_gives_the_eager_results(loaded, videos) -> None:
    """The ONNX export run by onnxruntime, finished by the same heads, answers as the eager
    model does (caption, left out of the export, runs eagerly)."""
    model, world = loaded
    item = read_file(videos["long"])
    eager = Predictor(model, world, questions=["what moves?"]).run(item)
    onnx = Predictor(model, world, questions=["what moves?"], runtime="onnxruntime").run(item)
    assert _close(onnx["video"], eager["video"])
    assert _close(onnx["windows"], eager["windows"])


def _close(a, b, tol: float = 2e-3) -> bool:
    """Equal JSON, numbers to ``tol``."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_close, a, b))
    if isinstance(a, float) and not isinstance(b, bool):
        return abs(a - b) <= tol
    return a == b
