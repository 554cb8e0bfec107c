"""Cut long videos into windows and decode one window at a time.

A :class:`Window` is a span ``[start, end)`` in seconds of its parent file, measured from the
video stream's start time (the origin PySceneDetect uses as well), so planned windows, detected
scenes and decoded frame times share one clock. :func:`plan_windows` lays fixed windows over a
file, :func:`scene_windows` follows shot cuts, and :func:`decode_window` seeks to a window and
decodes only it, so the cost of a window does not grow with its position in the file.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import av
import numpy as np
from scenedetect import ContentDetector, SceneManager
from scenedetect.backends.pyav import VideoStreamAv

from veilfed.data.video import (
    DecodedClip,
    Source,
    VideoError,
    _open_input,
    _reason,
    av_streams,
    check_sample_rate,
    describe,
)
from veilfed.errors import UsageError

EPS = 1e-6  # seconds: float slack when comparing timestamps with window bounds
AUDIO_PREROLL_S = 0.25  # decode this much audio before a window: AAC needs a frame of overlap
DEMUX_SLACK_S = 1.0  # stop demuxing once packets are this far past the end and video is done


@dataclass(frozen=True)
class Window:
    """Span ``[start, end)`` in seconds of the parent file; ``index`` is its rank in its plan."""

    index: int
    start: float
    end: float

    def __post_init__(self) -> None:
        if not (self.index >= 0 and 0 <= self.start < self.end and math.isfinite(self.end)):
            raise UsageError(
                f"window {self.index}: [{self.start}, {self.end}) is not a span of seconds "
                "0 <= start < end; fix the window list"
            )

    @property
    def length(self) -> float:
        return self.end - self.start

    def to_json(self) -> dict[str, object]:
        return {"index": self.index, "start": self.start, "end": self.end}

    @classmethod
    def from_json(cls, data: object, index: int = 0) -> Window:
        """Window from :meth:`to_json` output or a ``[start, end]`` list (``index`` given here)."""
        try:
            if isinstance(data, dict):
                return cls(int(data["index"]), float(data["start"]), float(data["end"]))
            start, end = data  # type: ignore[misc]
            return cls(index, float(start), float(end))
        except (KeyError, TypeError, ValueError):
            raise UsageError(
                f"window {index}: {data!r} is not a window; "
                'write {"index": i, "start": s, "end": e} or [start, end]'
            ) from None


@dataclass
class WindowClip(DecodedClip):
    """A :class:`DecodedClip` of one window, plus where its frames come from.

    ``source_frames`` counts the video frames inside the window (not the whole file);
    ``times`` are the picked frames' times in seconds of the parent file; ``decoded_frames``
    and ``first_decoded_time`` describe the decoding work (frames decoded after the seek,
    including those before the window start), so callers and tests can see that only the
    neighbourhood of the window was decoded.
    """

    times: np.ndarray  # float64 [frames]
    window: Window
    decoded_frames: int
    first_decoded_time: float


def plan_windows(
    duration: float, length: float, stride: float | None = None, name: str = ""
) -> list[Window]:
    """Windows of ``length`` seconds every ``stride`` seconds (default ``length``) over a file.

    Every window has the full length: the last one is shifted back to end at ``duration``
    rather than cut short, and left out when it would repeat the previous window.
    """
    stride = length if stride is None else stride
    if not length > 0:
        raise UsageError(f"{name}: window length {length:g} s must be positive; raise --window")
    if not stride > 0:
        raise UsageError(f"{name}: window stride {stride:g} s must be positive; raise --stride")
    if not duration > 0:
        raise UsageError(f"{name}: file duration {duration:g} s is not positive; re-encode it")
    if length > duration + EPS:
        raise UsageError(
            f"{name}: window length {length:g} s is longer than the file ({duration:.2f} s); "
            "lower --window or leave it out"
        )
    starts: list[float] = []
    k = 0
    while k * stride + length <= duration + EPS:
        starts.append(k * stride)
        k += 1
    tail = max(duration - length, 0.0)
    if tail > starts[-1] + EPS:
        starts.append(tail)
    return [Window(i, s, min(s + length, duration)) for i, s in enumerate(starts)]


def scene_windows(
    source: Source, min_length: float, max_length: float, name: str | None = None
) -> list[Window]:
    """Windows that follow shot cuts found by PySceneDetect's ``ContentDetector``.

    Scenes shorter than ``min_length`` are merged into the next one (the last into the one
    before it); scenes longer than ``max_length`` are split with :func:`plan_windows`. A file
    shorter than ``min_length`` gives one window covering all of it.
    """
    label = describe(source, name)
    if not 0 < min_length <= max_length:
        raise UsageError(
            f"{label}: scene lengths {min_length:g}-{max_length:g} s need "
            "0 < min <= max; fix --min-scene/--max-scene"
        )
    if isinstance(source, bytes | bytearray | memoryview):
        source = io.BytesIO(bytes(source))
    try:
        stream = VideoStreamAv(source, name=label, suppress_output=True)
        manager = SceneManager()
        manager.add_detector(ContentDetector())
        manager.detect_scenes(stream)
        scenes = manager.get_scene_list(start_in_scene=True)
    except Exception as exc:  # PySceneDetect wraps FFmpeg errors in its own types
        raise VideoError(
            f"{label}: scene detection failed ({_reason(exc)}); re-encode it as MP4/MKV/WebM"
        ) from None
    if not scenes:
        raise VideoError(f"{label}: no decodable video frames (unsupported codec or corrupt)")
    spans: list[list[float]] = []
    for first, last in scenes:
        if spans and spans[-1][1] - spans[-1][0] < min_length:
            spans[-1][1] = last.seconds
        else:
            spans.append([first.seconds, last.seconds])
    if len(spans) > 1 and spans[-1][1] - spans[-1][0] < min_length:
        spans[-2][1] = spans.pop()[1]
    windows: list[Window] = []
    for start, end in spans:
        if end - start > max_length + EPS:
            parts = [
                (start + w.start, start + w.end) for w in plan_windows(end - start, max_length)
            ]
        else:
            parts = [(start, end)]
        windows.extend([Window(len(windows) + i, s, e) for i, (s, e) in enumerate(parts)])
    return windows


def _packet_time(packet: av.Packet, origin: float) -> float:
    """Presentation time of a demuxed packet on the window clock; -inf when it has none."""
    if packet.pts is None or not packet.time_base:
        return -math.inf
    return float(packet.pts * packet.time_base) - origin


def decode_window(
    source: Source,
    window: Window,
    frames: int,
    size: tuple[int, int],
    sample_rate: int = 16_000,
    audio_samples: int | None = None,
    name: str | None = None,
    by_time: bool = False,
) -> WindowClip:
    """Decode only ``window`` of ``source``: ``frames`` frames of ``size`` (H, W) and its audio.

    Seeks back to the keyframe before the window (less :data:`AUDIO_PREROLL_S`, so the audio
    decoder has warmed up by ``start``) and stops demuxing once past ``end``. Frames whose time
    lies in ``[start, end)`` are picked uniformly, as :func:`veilfed.data.video.decode` does over a
    whole clip; with ``by_time``, the frame showing at each of ``frames`` even time steps is
    taken (a source slower than that repeats frames; one decodable frame suffices). Audio is mono
    float32 at ``sample_rate`` covering exactly ``[start, end)`` (``round(length *
    sample_rate)`` samples, zero-padded past the end of the audio, assumed gap-free), then padded
    or trimmed to ``audio_samples`` when given. A file without audio, or a window its audio does
    not reach, gives zeros and ``has_audio=False``. Every failure is a one-line
    :class:`VideoError`.
    """
    label = describe(source, name)
    where = f"window {window.index} [{window.start:.2f}, {window.end:.2f}) s"
    check_sample_rate(sample_rate, label)
    if frames < 1:
        raise VideoError(f"{label}: {frames} frames requested for {where}; ask for at least 1")
    height, width = size
    start, end = window.start, window.end
    with _open_input(source, label) as container:
        vstream, astream = av_streams(container, label)
        streams = [vstream] + ([astream] if astream is not None else [])
        origin = float((vstream.start_time or 0) * vstream.time_base)
        fps = float(vstream.average_rate or vstream.guessed_rate or 0)
        images: list[np.ndarray] = []
        times: list[float] = []
        decoded, first_time, last_time = 0, math.nan, -math.inf
        chunks: list[np.ndarray] = []
        audio_origin: float | None = None
        audio_count = 0
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        video_done, audio_done = False, astream is None
        seek_to = max(start - (AUDIO_PREROLL_S if astream is not None else 0.0), 0.0)
        try:
            offset = (vstream.start_time or 0) + math.floor(seek_to / vstream.time_base)
            container.seek(offset, stream=vstream, backward=True, any_frame=False)
            for packet in container.demux(*streams):
                if video_done and (
                    audio_done or _packet_time(packet, origin) > end + DEMUX_SLACK_S
                ):
                    break
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        if frame.time is not None:
                            t = frame.time - origin
                        else:
                            t = last_time + 1 / fps if fps else last_time
                        last_time = t
                        decoded += 1
                        if decoded == 1:
                            first_time = t
                        if t >= end - EPS:
                            video_done = True
                        elif t >= start - EPS:
                            images.append(
                                frame.to_ndarray(format="rgb24", width=width, height=height)
                            )
                            times.append(t)
                    else:
                        if audio_origin is None:
                            audio_origin = (frame.time or 0.0) - origin
                        for out in resampler.resample(frame):
                            chunks.append(out.to_ndarray()[0])
                            audio_count += out.samples
                        if audio_origin + audio_count / sample_rate >= end:
                            audio_done = True
            else:  # end of file: flush what the resampler still holds
                if astream is not None:
                    chunks.extend(out.to_ndarray()[0] for out in resampler.resample(None))
        except (av.FFmpegError, ValueError) as exc:
            raise VideoError(
                f"{label}: corrupt, truncated or unseekable video at {where} ({_reason(exc)}); "
                "re-encode or re-copy it"
            ) from None
    if len(images) < (1 if by_time else frames):
        raise VideoError(
            f"{label}: {where} has {len(images)} decodable frames, fewer than the {frames} "
            "required; use a longer window or lower the frame count"
        )
    if by_time:  # the frame showing at each of `frames` even steps (a slow source repeats)
        due = start + (end - start) * np.arange(frames) / frames
        pick = np.clip(np.searchsorted(np.asarray(times), due + EPS, side="right") - 1, 0, None)
    else:
        pick = np.linspace(0, len(images) - 1, frames).round().astype(int)
    video = np.stack([images[i] for i in pick])
    span = round((end - start) * sample_rate)
    audio = np.zeros(span, np.float32)
    has_audio = False
    if chunks and audio_origin is not None:
        samples = np.concatenate(chunks).astype(np.float32)
        first = round((start - audio_origin) * sample_rate)  # index of `start` in `samples`
        lo, hi = max(first, 0), min(first + span, samples.size)
        if hi > lo:
            audio[lo - first : hi - first] = samples[lo:hi]
            has_audio = True
    if audio_samples is not None:
        fitted = np.zeros(audio_samples, np.float32)
        fitted[: min(audio_samples, audio.size)] = audio[:audio_samples]
        audio = fitted
    return WindowClip(
        video=video,
        audio=audio,
        has_audio=has_audio,
        source_fps=fps,
        source_frames=len(images),
        times=np.asarray([times[i] for i in pick], dtype=np.float64),
        window=window,
        decoded_frames=decoded,
        first_decoded_time=first_time,
    )
