from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest

from veilfed.data import video
from veilfed.data.video import VideoError
from veilfed.data.windowed import OneWindowPerClip
from veilfed.data.windows import (
    AUDIO_PREROLL_S,
    Window,
    WindowClip,
    decode_window,
    plan_windows,
    scene_windows,
)
from veilfed.errors import UsageError

FPS, SR, SECONDS = 8, 16_000, 6
EVENT = (3.0, 3.5)  # seconds with bright frames and a 1 kHz tone


def _event_clip(with_audio: bool = True) -> bytes:
    """6 s at 8 fps: dark frames and silence, except bright frames and a tone during EVENT."""
    t_frames = np.arange(SECONDS * FPS) / FPS
    frames = np.full((t_frames.size, 32, 32, 3), 20, np.uint8)
    frames[(t_frames >= EVENT[0]) & (t_frames < EVENT[1])] = 230
    t_audio = np.arange(SECONDS * SR) / SR
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t_audio)).astype(np.float32)
    tone[(t_audio < EVENT[0]) | (t_audio >= EVENT[1])] = 0
    return video.encode_mp4(frames, tone if with_audio else None, FPS, SR)


def _gop_clip(gop: int) -> bytes:
    """6 s at 8 fps with a keyframe every ``gop`` frames; frame i has grey level 4 * i; AAC."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=FPS, options={"g": str(gop), "keyint_min": str(gop)})
        vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
        vs.time_base = Fraction(1, FPS)
        ast = out.add_stream("aac", rate=SR, layout="mono")
        for i in range(SECONDS * FPS):
            img = np.full((32, 32, 3), 4 * i, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        samples = np.zeros((1, SECONDS * SR), np.float32)
        for start in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(samples[:, start : start + 1024]), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = SR, start
            out.mux(ast.encode(frame))
        out.mux(ast.encode(None))
    return buf.getvalue()


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


@pytest.fixture(scope="module")
def event_clip() -> bytes:
    return _event_clip()


@pytest.mark.parametrize("sample_rate", [SR, 8_000])
def test_frames_and_audio_of_an_event_land_in_its_window_only(event_clip, tmp_path, sample_rate):
    path = tmp_path / "event.mp4"
    path.write_bytes(event_clip)
    windows = plan_windows(SECONDS, 1.0, name="event.mp4")
    assert [(w.start, w.end) for w in windows] == [(i, i + 1.0) for i in range(SECONDS)]
    loud = []
    for w in windows:
        clip = decode_window(path, w, FPS, (16, 16), sample_rate=sample_rate)
        assert isinstance(clip, WindowClip) and clip.window == w
        assert clip.video.shape == (FPS, 16, 16, 3) and clip.source_frames == FPS
        assert np.all((clip.times >= w.start) & (clip.times < w.end))
        np.testing.assert_allclose(clip.times, w.start + np.arange(FPS) / FPS, atol=1e-6)
        bright = clip.video.reshape(FPS, -1).mean(axis=1) > 128
        expected = (clip.times >= EVENT[0]) & (clip.times < EVENT[1])
        assert np.array_equal(bright, expected), (w, bright)
        assert clip.has_audio and clip.audio.shape == (sample_rate,)
        loud.append(_rms(clip.audio))
        if w.index == 3:  # the tone fills the window's first half only
            half = sample_rate // 2
            assert _rms(clip.audio[:half]) > 0.3 and _rms(clip.audio[half:]) < 0.02
            edge = sample_rate // 100  # 10 ms either side of the tone's end
            assert _rms(clip.audio[half - 2 * edge : half - edge]) > 0.3
            assert _rms(clip.audio[half + edge : half + 2 * edge]) < 0.05
    assert loud[3] > 0.2, loud
    assert max(loud[:3] + loud[4:]) < 0.02, loud


def test_audio_is_fitted_to_audio_samples(event_clip):
    w = Window(3, 3.0, 4.0)
    clip = decode_window(io.BytesIO(event_clip), w, 2, (8, 8), audio_samples=SR // 4)
    assert clip.audio.shape == (SR // 4,) and _rms(clip.audio) > 0.3
    np.testing.assert_allclose(clip.times, [3.0, 3.875])
    longer = decode_window(event_clip, w, 2, (8, 8), audio_samples=2 * SR)
    assert longer.audio.shape == (2 * SR,) and not longer.audio[SR:].any()


def test_late_window_seeks_instead_of_decoding_from_the_start(event_clip):
    gop = 8  # a keyframe at least every second
    data = _gop_clip(gop)
    w = Window(4, 4.0, 5.0)
    clip = decode_window(data, w, 4, (32, 32))
    # Seeked: decoding began at most one GOP (plus the audio preroll) before the window ...
    assert clip.first_decoded_time >= w.start - AUDIO_PREROLL_S - gop / FPS
    # ... and stopped at its end: every decoded frame lies in [first_decoded_time, end].
    assert clip.decoded_frames <= round((w.end - clip.first_decoded_time) * FPS) + 2
    assert clip.decoded_frames < SECONDS * FPS / 2
    # The picked frames are the right ones: frame i has grey level 4 * i.
    index = np.round(clip.times * FPS).astype(int)
    np.testing.assert_array_equal(index, [32, 34, 37, 39])
    levels = clip.video.reshape(4, -1).mean(axis=1)
    np.testing.assert_allclose(levels, 4 * index, atol=3)
    first = decode_window(data, Window(0, 0.0, 1.0), 4, (32, 32))
    assert first.first_decoded_time == 0.0 and first.decoded_frames <= gop + 2
    # With a single keyframe (libx264 defaults) decoding starts at 0 but still stops at the end.
    single = decode_window(event_clip, Window(3, 3.0, 4.0), 4, (8, 8))
    assert single.first_decoded_time == 0.0 and single.decoded_frames <= 4 * FPS + 2


def test_file_without_audio_gives_zeros():
    data = _event_clip(with_audio=False)
    clip = decode_window(data, Window(3, 3.0, 4.0), 4, (16, 16), audio_samples=1234)
    assert not clip.has_audio
    assert clip.audio.shape == (1234,) and clip.audio.dtype == np.float32 and not clip.audio.any()
    assert clip.video.shape == (4, 16, 16, 3)


def test_too_few_frames_or_a_window_past_the_end_is_one_line(event_clip):
    with pytest.raises(VideoError, match=r"^clip\.mp4: window 2 \[2\.00, 3\.00\) s has 8 ") as e:
        decode_window(event_clip, Window(2, 2.0, 3.0), 9, (8, 8), name="clip.mp4")
    assert "\n" not in str(e.value)
    with pytest.raises(VideoError, match="has 0 decodable frames"):
        decode_window(event_clip, Window(9, 9.0, 10.0), 1, (8, 8), name="clip.mp4")
    with pytest.raises(VideoError, match="not a readable video"):
        decode_window(b"not a video", Window(0, 0.0, 1.0), 1, (8, 8))


def test_plan_windows_edges():
    def spans(*args, **kw):
        return [(w.start, w.end) for w in plan_windows(*args, **kw)]

    assert spans(6.5, 2.0) == [(0, 2), (2, 4), (4, 6), (4.5, 6.5)]
    assert spans(6.0, 2.0) == [(0, 2), (2, 4), (4, 6)]  # no duplicate tail
    assert spans(6.0, 2.0, stride=3.0) == [(0, 2), (3, 5), (4, 6)]
    assert spans(5.0, 2.0, stride=1.5) == [(0, 2), (1.5, 3.5), (3, 5)]
    assert spans(2.0, 2.0) == [(0, 2)]
    assert [w.index for w in plan_windows(10.0, 3.0)] == [0, 1, 2, 3]
    for length, stride in [(0.0, None), (-1.0, None), (1.0, 0.0), (1.0, -2.0)]:
        with pytest.raises(UsageError, match="must be positive"):
            plan_windows(6.0, length, stride, name="a.mp4")
    with pytest.raises(UsageError) as e:
        plan_windows(2.5, 4.0, name="a.mp4")
    assert str(e.value) == (
        "a.mp4: window length 4 s is longer than the file (2.50 s); lower --window or leave it out"
    )


def test_window_json_round_trip():
    w = Window(2, 1.5, 3.25)
    assert Window.from_json(w.to_json()) == w
    assert Window.from_json([1.5, 3.25], index=2) == w
    for bad in ([3.0, 1.0], [-1.0, 1.0], "x", {"start": 0}):
        with pytest.raises(UsageError):
            Window.from_json(bad)


@pytest.fixture(scope="module")
def two_scenes() -> bytes:
    """4 s at 8 fps: 2 s of red, then 2 s of blue (both with a little noise)."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 20, (4 * FPS, 48, 48, 3), dtype=np.uint8)
    frames[: 2 * FPS, ..., 0] += 200
    frames[2 * FPS :, ..., 2] += 200
    return video.encode_mp4(frames, None, FPS)


def test_scene_windows_find_the_cut(two_scenes, tmp_path):
    windows = scene_windows(two_scenes, 0.5, 10.0, name="two.mp4")
    assert len(windows) == 2
    assert windows[0].start == 0.0 and abs(windows[0].end - 2.0) <= 0.25
    assert windows[1].start == windows[0].end and abs(windows[1].end - 4.0) <= 0.2
    path = tmp_path / "two.mp4"
    path.write_bytes(two_scenes)
    assert scene_windows(path, 0.5, 10.0) == windows
    split = scene_windows(two_scenes, 0.5, 1.5)  # each 2 s scene becomes two 1.5 s windows
    assert [w.index for w in split] == [0, 1, 2, 3]
    assert all(abs(w.length - 1.5) < 1e-6 for w in split)
    merged = scene_windows(two_scenes, 3.0, 10.0)  # the 2 s first scene joins the next
    assert [(w.start, w.end) for w in merged] == [(0.0, windows[1].end)]
    with pytest.raises(UsageError, match="need 0 < min <= max"):
        scene_windows(two_scenes, 2.0, 1.0)
    with pytest.raises(VideoError, match="scene detection failed"):
        scene_windows(b"junk", 0.5, 1.0, name="junk.mp4")


def test_each_round_continues_through_a_file_s_windows() -> None:
    """A client builds its dataset anew each round: with ``offset`` the draws continue, so round
    two does not replay round one's windows; a stored id ending in #<k> stays a whole clip."""
    items = ["a#0", "a#1", "a#2", "old#1"]
    first = OneWindowPerClip(items, items, seed=3, clip_ids=["a", "old#1"])
    assert len(first) == 2 and first.clips == ["a", "old#1"]
    seen = [first[0] for _ in range(3)]
    assert sorted(seen) == ["a#0", "a#1", "a#2"]
    later = OneWindowPerClip(items, items, seed=3, offset=1, clip_ids=["a", "old#1"])
    assert later[0] == seen[1] and later[1] == "old#1"
