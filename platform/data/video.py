"""Video I/O with PyAV: encode clips to MP4 (H.264 + AAC) and decode any container to tensors.

Decoding accepts a path, bytes or a file-like object, so encrypted-store readers can hand over
decrypted bytes without a temp file. Every PyAV failure becomes a one-line :class:`VideoError`
naming the source, never a traceback from deep inside FFmpeg.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import av
import numpy as np

from veilfed.errors import UsageError

Source = str | Path | bytes | bytearray | memoryview | BinaryIO

VIDEO_CODEC = "libx264"
VIDEO_OPTIONS = {"crf": "16", "preset": "veryfast", "tune": "zerolatency"}
AUDIO_CODEC = "aac"
AUDIO_BITRATE = 64_000
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4_000, 192_000


class VideoError(UsageError):
    """A video that cannot be read or written as asked; the message names the source."""


@dataclass
class DecodedClip:
    """Frames and audio resampled to the requested geometry."""

    video: np.ndarray  # uint8 [T, H, W, 3]
    audio: np.ndarray  # float32 [S], zeros when has_audio is False
    has_audio: bool
    source_fps: float
    source_frames: int


def describe(source: Source, name: str | None = None) -> str:
    """Human name of a source for error messages (never its contents)."""
    if name:
        return name
    if isinstance(source, str | Path):
        return str(source)
    return "<in-memory video>"


def _open_input(source: Source, label: str) -> av.container.InputContainer:
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise VideoError(f"{label}: empty video (0 bytes); supply a non-empty file")
        source = io.BytesIO(source)
    elif isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise VideoError(f"{label}: no such file; check the path")
        if path.stat().st_size == 0:
            raise VideoError(f"{label}: empty file (0 bytes); supply a non-empty video")
    try:
        return av.open(source if not isinstance(source, Path) else str(source), mode="r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(
            f"{label}: not a readable video ({_reason(exc)}); re-encode it as MP4/MKV/WebM"
        ) from None


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.splitlines()[0][:120]


def probe(source: Source, name: str | None = None) -> dict[str, object]:
    """Stream facts of a video (codec, size, fps, frames, audio) without decoding it all."""
    label = describe(source, name)
    with _open_input(source, label) as container:
        if not container.streams.video:
            raise VideoError(f"{label}: no video stream; supply a file with video")
        vs = container.streams.video[0]
        info: dict[str, object] = {
            "format": container.format.name,
            "video_codec": vs.codec_context.name,
            "width": vs.codec_context.width,
            "height": vs.codec_context.height,
            "fps": float(vs.average_rate or vs.guessed_rate or 0),
            "frames": vs.frames,
            "duration_s": float(container.duration / av.time_base) if container.duration else None,
            "has_audio": bool(container.streams.audio),
        }
        if container.streams.audio:
            a = container.streams.audio[0]
            info.update(
                audio_codec=a.codec_context.name,
                sample_rate=a.codec_context.sample_rate,
                channels=a.codec_context.channels,
            )
        return info


def probed_duration(facts: Mapping[str, Any]) -> float | None:
    """Seconds of a file from its :func:`probe` facts: the container's duration, else frames /
    fps; None when neither is known."""
    if facts.get("duration_s"):
        return float(facts["duration_s"])
    if facts.get("frames") and facts.get("fps"):
        return float(facts["frames"]) / float(facts["fps"])
    return None


def check_sample_rate(sample_rate: int, label: str) -> None:
    """A one-line :class:`VideoError` for an audio rate outside what decoding supports."""
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise VideoError(
            f"{label}: sample rate {sample_rate} Hz is outside "
            f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz; use e.g. 16000"
        )


def av_streams(container: av.container.InputContainer, label: str) -> tuple[Any, Any]:
    """(the first video stream, the first audio stream or None); no video is a VideoError."""
    if not container.streams.video:
        raise VideoError(f"{label}: no video stream; supply a file with video")
    audio = container.streams.audio[0] if container.streams.audio else None
    return container.streams.video[0], audio


def decode(
    source: Source,
    frames: int,
    size: tuple[int, int],
    sample_rate: int = 16_000,
    audio_samples: int | None = None,
    name: str | None = None,
) -> DecodedClip:
    """Decode ``source`` to ``frames`` frames of ``size`` (H, W) and mono ``sample_rate`` audio.

    Frames are picked uniformly over the whole clip; audio covers the whole clip and is padded or
    trimmed to ``audio_samples`` when given. A file without audio yields zeros, ``has_audio=False``.
    """
    label = describe(source, name)
    check_sample_rate(sample_rate, label)
    height, width = size
    with _open_input(source, label) as container:
        vstream, astream = av_streams(container, label)
        streams = [vstream] + ([astream] if astream is not None else [])
        images: list[np.ndarray] = []
        chunks: list[np.ndarray] = []
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        try:
            for packet in container.demux(*streams):
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        images.append(frame.to_ndarray(format="rgb24", width=width, height=height))
                    else:
                        chunks.extend(r.to_ndarray()[0] for r in resampler.resample(frame))
            if astream is not None:
                chunks.extend(r.to_ndarray()[0] for r in resampler.resample(None))
        except (av.FFmpegError, ValueError) as exc:
            raise VideoError(
                f"{label}: corrupt or truncated video ({_reason(exc)}); re-encode or re-copy it"
            ) from None
        fps = float(vstream.average_rate or vstream.guessed_rate or 0)
    if not images:
        raise VideoError(f"{label}: no decodable video frames (unsupported codec or corrupt)")
    if len(images) < frames:
        raise VideoError(
            f"{label}: has {len(images)} frames, fewer than the {frames} required; "
            "use a longer clip or lower the frame count"
        )
    pick = np.linspace(0, len(images) - 1, frames).round().astype(int)
    video = np.stack([images[i] for i in pick])
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    has_audio = astream is not None and audio.size > 0
    if audio_samples is not None:
        fitted = np.zeros(audio_samples, np.float32)
        fitted[: min(audio_samples, audio.size)] = audio[:audio_samples]
        audio = fitted
    return DecodedClip(video, audio, has_audio, fps, len(images))


def content_digest(source: Source, name: str | None = None) -> tuple[int, str]:
    """(video frame count, sha256 of every decoded frame and audio sample) of ``source``.

    Decodes the whole file at its own resolution and sample format, so the digest names the
    picture and sound rather than the file: a re-mux that keeps the decoded samples (MP4/MOV
    family, faststart) or trailing bytes give the same digest, while any change to a decoded pixel
    or sample gives another, including audio priming samples a container does not trim. Raises
    :class:`VideoError` (one line) for a file that does not decode completely.
    """
    label = describe(source, name)
    # One hash per stream: containers interleave audio and video packets differently.
    pictures, sound = hashlib.sha256(), hashlib.sha256()
    count = 0
    with _open_input(source, label) as container:
        if not container.streams.video:
            raise VideoError(f"{label}: no video stream; supply a file with video")
        vstream = container.streams.video[0]
        streams = [vstream, *container.streams.audio[:1]]
        try:
            for packet in container.demux(*streams):
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        count += 1
                        pictures.update(b"%dx%d\0" % (frame.width, frame.height))
                        pictures.update(frame.to_ndarray(format="rgb24").tobytes())
                    else:
                        sound.update(b"%s\0" % frame.format.name.encode())
                        sound.update(np.ascontiguousarray(frame.to_ndarray()).tobytes())
        except (av.FFmpegError, ValueError) as exc:
            raise VideoError(
                f"{label}: corrupt or truncated video ({_reason(exc)}); re-encode or re-copy it"
            ) from None
    if not count:
        raise VideoError(f"{label}: no decodable video frames (unsupported codec or corrupt)")
    return count, hashlib.sha256(pictures.digest() + sound.digest()).hexdigest()


def encode_mp4(
    video: np.ndarray, audio: np.ndarray | None, fps: int, sample_rate: int = 16_000
) -> bytes:
    """MP4 bytes (H.264 yuv420p + AAC mono) of uint8 [T, H, W, 3] frames and float audio."""
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise VideoError(
            f"encode_mp4: expected uint8 [T, H, W, 3] frames, got {video.dtype} "
            f"{tuple(video.shape)}"
        )
    _, height, width, _ = video.shape
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        vs = out.add_stream(VIDEO_CODEC, rate=fps, options=VIDEO_OPTIONS)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.time_base = Fraction(1, fps)
        ast = None
        if audio is not None:
            ast = out.add_stream(AUDIO_CODEC, rate=sample_rate, layout="mono")
            ast.bit_rate = AUDIO_BITRATE
        for i, img in enumerate(video):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        if ast is not None:
            step = 1024
            samples = np.asarray(audio, dtype=np.float32)
            for start in range(0, samples.size, step):
                chunk = samples[start : start + step][None, :]
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(chunk), format="fltp", layout="mono"
                )
                frame.sample_rate = sample_rate
                frame.pts = start
                out.mux(ast.encode(frame))
            out.mux(ast.encode(None))
    return buf.getvalue()
