"""Prediction on a live source, window by window as it plays: ``veilfed predict --stream``.

:func:`stream` opens anything PyAV opens (a file, an RTSP/HTTP URL, a capture device), takes
frames at the model's rate (the frame due every ``1 / fps`` seconds of stream time; a slower
source repeats frames) with the audio resampled to its rate, and cuts consecutive windows of one
clip span. A file is played at its own frame rate (``realtime``): a frame is taken no earlier than
its presentation time after the start, as a camera would deliver it.

Each complete window is predicted at once (the same dataset path and heads as ``predict`` on a
file) and yields ``{"index", "start", "end", "latency_ms", "compute_ms", "tasks"}``: latency from
the moment the window's last frame was due to its result, compute the model's share of it. A
window that completes more than one clip span late is dropped, not predicted (``{"index",
"start", "end", "dropped": true, "late_ms"}``), so a model slower than real time keeps up by
skipping windows and says so. Audio is cut by sample count from the stream's first sample.
:func:`summary` gives the closing line: windows predicted and dropped, latency p50 / p95 and the
real-time factor (seconds of video per second of compute).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np

from veilfed.data.dataset import ClipDataset
from veilfed.data.video import DecodedClip, VideoError
from veilfed.inference.inputs import inference_specs


class _WindowSource:
    """A ClipSource of one decoded window (the live frames and audio)."""

    def __init__(self, clip: DecodedClip) -> None:
        self.clip = clip

    def ids(self) -> list[str]:
        return ["live"]

    def __contains__(self, clip_id: object) -> bool:
        return clip_id == "live"

    def read(self, clip_id: str) -> tuple[DecodedClip, dict[str, Any]]:
        return self.clip, {"synthetic": False, "source": {"name": "live"}}


def _open(source: str) -> Any:
    try:
        return av.open(source, mode="r", timeout=10.0)
    except (av.FFmpegError, OSError, ValueError) as exc:
        reason = f"cannot open the stream ({exc}); check the URL or device"
        raise VideoError(f"{source}: {reason}") from None


def _frames(container: Any, size: tuple[int, int], rate: int) -> Iterator[tuple[float, Any]]:
    """(presentation time in s, rgb frame [H, W, 3] | mono audio chunk) in stream order."""
    vs = container.streams.video[0]
    streams = [vs, *container.streams.audio[:1]]
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    try:
        for packet in container.demux(*streams):
            for frame in packet.decode():
                t = float(frame.time or 0.0)
                if isinstance(frame, av.VideoFrame):
                    yield t, frame.to_ndarray(format="rgb24", width=size[1], height=size[0])
                else:
                    for chunk in resampler.resample(frame):
                        yield t, chunk.to_ndarray()[0]
    except av.FFmpegError as exc:
        raise VideoError(f"the stream broke off ({exc}); results so far were printed") from None


def stream(
    predictor: Any, source: str | Path, realtime: bool = True, max_windows: int | None = None
) -> Iterator[dict[str, Any]]:
    """One result (or drop notice) per window of ``source`` (module docstring)."""
    world = predictor.world
    span, step = world.clip_seconds, 1.0 / world.fps
    specs = inference_specs(predictor.specs)
    label = str(source)
    container = _open(label)
    if not container.streams.video:
        container.close()
        raise VideoError(f"{label}: no video stream; supply a source with video")
    has_audio = bool(container.streams.audio)
    frames: list[np.ndarray] = []
    ready: list[tuple[np.ndarray, float]] = []  # complete windows' frames, waiting for audio
    audio = np.zeros(0, np.float32)
    due, index, origin = 0.0, 0, None
    _warm_up(predictor, specs)
    wall0 = time.perf_counter()

    def emit(final: bool) -> Iterator[dict[str, Any]]:
        """Windows whose audio has arrived too (every one at the end of the stream)."""
        nonlocal audio, index
        while ready and (final or not has_audio or audio.size >= world.audio_samples):
            window, last = ready.pop(0)
            live = audio[: world.audio_samples], has_audio
            result = _window(predictor, specs, window, live, index * span, index, wall0 + last)
            audio = audio[world.audio_samples :]
            index += 1
            yield result
            if max_windows is not None and index >= max_windows:
                return

    try:
        for t, item in _frames(container, (world.height, world.width), world.sample_rate):
            origin = t if origin is None else origin
            t -= origin
            if realtime:
                time.sleep(max(0.0, wall0 + t - time.perf_counter()))
            if item.ndim == 1:
                audio = np.concatenate([audio, item.astype(np.float32)])
            else:
                while t + step / 2 >= due:  # the frame due at `due` (a slow source repeats)
                    frames.append(item)
                    due += step
                while len(frames) >= world.frames:
                    ready.append((np.stack(frames[: world.frames]), t))
                    del frames[: world.frames]
            yield from emit(final=False)
            if max_windows is not None and index >= max_windows:
                return
        yield from emit(final=True)
    finally:
        container.close()


def _warm_up(predictor: Any, specs: Any) -> None:
    """One prediction on a blank window before the clock starts: the first forward pass pays
    for lazy initialisation, which is no latency of the stream's."""
    world = predictor.world
    blank = np.zeros((world.frames, world.height, world.width, 3), np.uint8)
    silence = np.zeros(world.audio_samples, np.float32)
    clip = DecodedClip(blank, silence, False, float(world.fps), world.frames)
    predictor.window_results(ClipDataset(_WindowSource(clip), world, tasks=specs, future=False)[0])


def _window(predictor, specs, frames, live, start, index, due) -> dict[str, Any]:
    """Predict one complete window (or drop it when it completes over a clip span late);
    ``due``: the wall time its last frame was due, ``live``: (its audio, the source has audio)."""
    world = predictor.world
    end = start + world.clip_seconds
    arrived = time.perf_counter()
    entry: dict[str, Any] = {"index": index, "start": round(start, 3), "end": round(end, 3)}
    if arrived - due > world.clip_seconds:
        return entry | {"dropped": True, "late_ms": round(1000 * (arrived - due), 1)}
    audio, has_audio = live
    fitted = np.zeros(world.audio_samples, np.float32)
    fitted[: audio.size] = audio
    clip = DecodedClip(frames, fitted, has_audio and audio.size > 0, float(world.fps), len(frames))
    sample = ClipDataset(_WindowSource(clip), world, tasks=specs, future=False)[0]
    tasks = predictor.window_results(sample, offset=start)
    done = time.perf_counter()
    latency = {"latency_ms": round(1000 * (done - due), 1)}
    return entry | latency | {"compute_ms": round(1000 * (done - arrived), 1), "tasks": tasks}


def summary(results: list[dict[str, Any]], clip_seconds: float) -> dict[str, Any]:
    """The closing line of a stream: counts, latency p50 / p95, real-time factor."""
    done = [r for r in results if not r.get("dropped")]
    latency = np.array([r["latency_ms"] for r in done]) if done else np.zeros(0)
    compute = np.array([r["compute_ms"] for r in done]) if done else np.zeros(0)
    return {
        "windows": len(done),
        "dropped": len(results) - len(done),
        "latency_p50_ms": round(float(np.median(latency)), 1) if done else None,
        "latency_p95_ms": round(float(np.percentile(latency, 95)), 1) if done else None,
        "realtime_factor": round(1000 * clip_seconds / float(np.median(compute)), 2)
        if done
        else None,
    }
