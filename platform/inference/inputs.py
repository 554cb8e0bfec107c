"""Videos to predict on, read exactly as training reads stored clips.

:class:`FileSource` is a :class:`veilfed.data.dataset.ClipSource` over local video files (any
container PyAV opens, any size, rate and length, with or without audio), and :class:`StoreInputs`
the same over clip ids of an encrypted store (decrypted in memory). Each input is one *video*; a
video longer than the model's clip span (its ``input.json`` ``frames / fps`` seconds) is read in
windows of one clip span every ``stride`` seconds (default: the span), the last one shifted back
to end with the file, so every window holds the same number of frames at the rate the model was
trained on, with its audio and transcript cut to the same seconds. A shorter video is one window.

A subtitle file beside a video (``clip.vtt`` or ``clip.srt`` next to ``clip.mp4``) is its
transcript, the text modality. Decoding goes through :class:`veilfed.data.dataset.ClipDataset`,
so a prediction sees the same frames, audio and tokens a training step would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from veilfed.data import annotations, video
from veilfed.data.dataset import ClipDataset
from veilfed.data.synth import WorldConfig
from veilfed.data.windowed import window_ids
from veilfed.data.windows import EPS, plan_windows
from veilfed.errors import UsageError
from veilfed.tasks import TaskSpec


@dataclass
class VideoInput:
    """One video to predict on: its display name, bytes and record (as a store keeps it)."""

    name: str
    data: bytes
    record: dict[str, Any]

    @property
    def duration(self) -> float:
        return float(self.record["source"]["duration_s"])


def probe_record(name: str, data: bytes) -> dict[str, Any]:
    """The record a store would keep for ``data`` (probe facts, no labels); a one-line
    :class:`veilfed.data.video.VideoError` when it is not a video with frames."""
    info = video.probe(data, name)
    duration = info.get("duration_s") or 0.0
    if info.get("frames") and info.get("fps"):  # the video's own length: audio may run on
        duration = float(info["frames"]) / float(info["fps"])
    if not info.get("fps") or not duration or duration <= 0:
        raise video.VideoError(f"{name}: no frames to read; supply a video with frames")
    return {"synthetic": False, "source": {"name": name, **info, "duration_s": float(duration)}}


def read_file(path: str | Path) -> VideoInput:
    """A local video file, with the subtitles beside it as its transcript."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc}); check the path") from None
    record = probe_record(str(path), data)
    for ext in annotations.SUBTITLE_EXTENSIONS:
        subtitles = path.with_suffix(ext)
        if subtitles.is_file():
            record["transcript_cues"] = [list(c) for c in annotations.read_subtitles(subtitles)]
            break
    return VideoInput(str(path), data, record)


def with_windows(item: VideoInput, clip_s: float, stride: float | None) -> VideoInput:
    """``item`` with the windows it is read in (module docstring) in its record; a video no
    longer than one clip span keeps none and is read whole."""
    if item.record.get("windows") or item.duration <= clip_s + EPS:
        return item
    spans = [[w.start, w.end] for w in plan_windows(item.duration, clip_s, stride, item.name)]
    return replace(item, record=item.record | {"windows": spans})


def spans_of(item: VideoInput) -> list[list[float]]:
    """The ``[start, end]`` seconds of each item :func:`windows_dataset` gives for ``item``."""
    return item.record.get("windows") or [[0.0, item.duration]]


class FileSource:
    """ClipSource over :class:`VideoInput` s, keyed by their names."""

    def __init__(self, items: Sequence[VideoInput]) -> None:
        self.items = {i.name: i for i in items}

    def ids(self) -> list[str]:
        return list(self.items)

    def __contains__(self, clip_id: object) -> bool:
        return clip_id in self.items

    def read(self, clip_id: str) -> tuple[bytes, dict[str, Any]]:
        item = self.items[clip_id]
        return item.data, item.record

    def labels(self, clip_id: str) -> dict[str, Any]:
        return self.items[clip_id].record


def inference_specs(specs: Mapping[str, TaskSpec]) -> dict[str, TaskSpec]:
    """The tasks as prediction reads them: a restoration task's input is the video as given
    (no degradation made at load time: the model restores what it is shown)."""
    out = {}
    for name, spec in specs.items():
        if spec.kind == "restoration":
            spec = replace(spec, options=spec.options | {"p_degraded": 0.0})
        out[name] = spec
    return out


def windows_dataset(
    item: VideoInput, world: WorldConfig, specs: Mapping[str, TaskSpec], stride: float | None
) -> ClipDataset:
    """One item per window of ``item`` (module docstring), decoded as training decodes."""
    item = with_windows(item, world.clip_seconds, stride)
    source = FileSource([item])
    ids = window_ids(source, source.ids())
    specs = inference_specs(specs)
    return ClipDataset(source, world, ids=ids, tasks=specs, future=False, by_time=True)


def store_input(store: Any, clip_id: str) -> VideoInput:
    """Clip ``clip_id`` of an opened encrypted store, decrypted in memory (its stored windows,
    if any, are the windows it is read in)."""
    if clip_id not in store:
        raise UsageError(f"{store.root}: no clip {clip_id!r} in this store; list it with --json")
    data, record = store.read(clip_id)
    record = dict(record)
    if not record.get("source", {}).get("duration_s"):
        record = probe_record(clip_id, data) | {k: v for k, v in record.items() if k != "source"}
    return VideoInput(clip_id, data, record)
