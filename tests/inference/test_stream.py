"""Prediction on a live source (veilfed.inference.stream): a file played at its own rate gives
one result per complete window as it plays, the same as predicting that window of the file; a
model slower than real time drops windows and says so; a source that cannot be opened is one
line."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from veilfed.data.video import VideoError
from veilfed.inference import Predictor, read_file
from veilfed.inference import stream as stream_module
from veilfed.inference.stream import stream, summary
from veilfed.model.saved import load_with_input


@pytest.fixture(scope="module")
def predictor(saved_model: Path) -> Predictor:
    model, world = load_with_input(saved_model)
    return Predictor(model, world, tasks=["scene", "detection"])


def test_a_file_plays_at_its_own_rate_window_by_window(predictor, videos) -> None:
    begun = time.perf_counter()
    results = list(stream(predictor, videos["long"]))
    played = time.perf_counter() - begun
    assert played >= 2.5  # 3.5 s of video are not read faster than they play
    assert [(r["index"], r["start"], r["end"]) for r in results] == [
        (0, 0.0, 1.0),
        (1, 1.0, 2.0),
        (2, 2.0, 3.0),
    ]
    assert all(r["latency_ms"] >= r["compute_ms"] > 0 for r in results)
    frames = results[1]["tasks"]["detection"]["frames"]
    assert [f["t"] for f in frames] == [1.0 + k / 8 for k in range(8)]  # stream time
    # The window as streamed is the window as read from the file.
    whole = predictor.run(read_file(videos["long"]))
    for live, stored in zip(results, whole["windows"][:3], strict=True):
        a, b = live["tasks"]["scene"]["top"], stored["tasks"]["scene"]["top"]
        assert a[0]["class"] == b[0]["class"]
        assert a[0]["probability"] == pytest.approx(b[0]["probability"], abs=0.02)
    line = summary(results, predictor.world.clip_seconds)
    assert line["windows"] == 3 and line["dropped"] == 0 and line["realtime_factor"] > 0


def test_the_tone_and_the_bright_frames_land_in_the_same_window(
    predictor, videos, monkeypatch
) -> None:
    """long.mp4 sounds and lights up during [1.0, 1.5) s: only window 1 hears and sees it."""
    seen = []
    window = stream_module._window

    def spy(predictor, specs, frames, live, start, index, due):
        seen.append((float(np.sqrt(np.mean(live[0] ** 2))), float(frames.mean())))
        return window(predictor, specs, frames, live, start, index, due)

    monkeypatch.setattr(stream_module, "_window", spy)
    list(stream(predictor, videos["long"], realtime=False))
    loud = [a for a, _ in seen]
    bright = [v for _, v in seen]
    assert max(range(3), key=loud.__getitem__) == 1 == max(range(3), key=bright.__getitem__)
    assert loud[1] > 100 * max(loud[0], loud[2])


def test_a_model_slower_than_real_time_drops_windows(predictor, videos, monkeypatch) -> None:
    fast = predictor.window_results

    def slow(sample, offset=0.0):
        time.sleep(2.2)  # over two clip spans per window
        return fast(sample, offset)

    monkeypatch.setattr(predictor, "window_results", slow)
    results = list(stream(predictor, videos["long"]))
    dropped = [r for r in results if r.get("dropped")]
    assert dropped and all(r["late_ms"] > 1000 for r in dropped) and "tasks" not in dropped[0]
    assert summary(results, 1.0)["dropped"] == len(dropped)


def test_a_source_that_cannot_be_opened_is_one_line(predictor, tmp_path) -> None:
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(VideoError, match="notes.mp4: cannot open the stream") as err:
        list(stream(predictor, tmp_path / "notes.mp4"))
    assert "\n" not in str(err.value)
