"""Predict with a trained model on videos: per window and per video, as JSON, with files.

:class:`Predictor` holds a loaded model, the clip geometry it was trained on and the choices of
one ``veilfed predict`` call (tasks, questions, window stride, output folder, the runtime that
runs the network: :mod:`veilfed.inference.runtime`). :meth:`run` reads
one :class:`veilfed.inference.inputs.VideoInput` in windows (``inputs`` module), runs the model on
batches of windows and returns the result object documented in docs/inference.md::

    {"source": NAME, "duration_s": D, "windows": [{"index", "start", "end", "tasks": {...}}],
     "video": {task: result}, "files": [paths written]}

``video`` holds each clip-level task's result over the whole video (its windows' class
probabilities, flags or values averaged), a frame-scores task's keyframes over the whole video
and, with ``out``, the summary clip of those keyframes. With ``out`` the predictor also writes,
per window, a PNG overlay of boxes, masks and keypoints on the middle frame and MP4s of the
restored and the predicted next frames (:mod:`veilfed.inference.media`). Nothing is written
outside ``out``, and a file is written under a temporary name and renamed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from veilfed.data import schema
from veilfed.data.dataset import collate
from veilfed.data.synth import WorldConfig
from veilfed.data.text import Tokenizer
from veilfed.errors import UsageError
from veilfed.inference import media
from veilfed.inference.inputs import VideoInput, spans_of, windows_dataset, with_windows
from veilfed.inference.readers import (
    CLIP_KINDS,
    READERS,
    clip_scores,
    describe_scores,
    keyframes,
)
from veilfed.inference.runtime import runner
from veilfed.tasks import TaskSpec

BATCH = 8  # windows per forward pass


def select_tasks(specs: dict[str, TaskSpec], wanted: Sequence[str] | None) -> list[str]:
    """``wanted`` checked against the model's tasks (all of them when empty)."""
    if not wanted:
        return list(specs)
    unknown = [t for t in wanted if t not in specs]
    if unknown:
        raise UsageError(
            f"--tasks: the model has no task {unknown[0]!r}; its tasks: {', '.join(specs)}"
        )
    return list(dict.fromkeys(wanted))


@dataclass
class Predictor:
    """One model and the options of one prediction call (module docstring)."""

    model: Any
    world: WorldConfig
    tasks: Sequence[str] = ()
    questions: Sequence[str] = ()
    stride: float | None = None
    out: Path | None = None
    runtime: str = "torch"
    onnx: Path | None = None
    device: str = "auto"
    tokenizer: Tokenizer = field(default_factory=Tokenizer)

    def __post_init__(self) -> None:
        self.model.eval()
        self.specs: dict[str, TaskSpec] = dict(self.model.task_specs)
        self.tasks = select_tasks(self.specs, self.tasks)
        if self.stride is not None and not (math.isfinite(self.stride) and self.stride > 0):
            raise UsageError(f"--stride {self.stride:g}: give a positive number of seconds")
        qa = [self.specs[t] for t in self.tasks if self.specs[t].kind == "qa"]
        if self.questions and not qa:
            raise UsageError("--question: the model (or --tasks) has no qa task to answer it")
        for text in self.questions:
            used = sum(1 for i in self.tokenizer.encode(text, 4 * schema.MAX_QUESTION_TOKENS) if i)
            if used > schema.MAX_QUESTION_TOKENS:
                raise UsageError(
                    f"--question {text[:40]!r}: {used} tokens, the model reads "
                    f"{schema.MAX_QUESTION_TOKENS}; shorten it (unknown words cost one per byte)"
                )
        for spec in qa:
            slots = spec.options["questions"]
            if len(self.questions) > slots:
                raise UsageError(
                    f"--question: the model's qa task {spec.name!r} answers {slots} questions "
                    f"per clip; ask at most {slots}"
                )
        self.runner = runner(
            self.runtime, self.model, self.world, self.onnx, self.tasks, self.device
        )
        self.folders: dict[str, Path] = {}  # source -> its folder under --out (never shared)

    def run(self, item: VideoInput) -> dict[str, Any]:
        """The result object of one video (module docstring)."""
        item = with_windows(item, self.world.clip_seconds, self.stride)
        dataset = windows_dataset(item, self.world, self.specs, self.stride)
        spans = spans_of(item)
        windows: list[dict[str, Any]] = []
        pooled: dict[str, list[torch.Tensor]] = {}
        frames: list[tuple[float, torch.Tensor]] = []  # (time, frame) of every window
        files: list[str] = []
        for first in range(0, len(dataset), BATCH):
            samples = [dataset[i] for i in range(first, min(first + BATCH, len(dataset)))]
            preds = self._predict(samples)
            for j, sample in enumerate(samples):
                k = first + j
                start, end = spans[k]
                one = {t: _index(preds[t], j) for t in self.tasks}
                results = self._read(one, sample)
                for t in self.tasks:
                    if self.specs[t].kind in CLIP_KINDS:
                        pooled.setdefault(t, []).append(clip_scores(self.specs[t], one[t]))
                if self.out is not None:
                    folder = self._folder(item.name)
                    files += media.window_files(folder, k, sample, one, self.specs)
                    if any(self.specs[t].kind == "frame_scores" for t in self.tasks):
                        times = sample["times"].tolist()
                        frames += list(zip(times, sample["video"], strict=False))
                entry = {"index": k, "start": round(start, 3), "end": round(end, 3)}
                windows.append(entry | {"tasks": results})
        video = {
            t: describe_scores(self.specs[t], torch.stack(s).mean(0)) for t, s in pooled.items()
        }
        video |= self._video_keyframes(item, windows, frames, files)
        return {
            "source": item.name,
            "duration_s": round(item.duration, 3),
            "windows": windows,
            "video": video,
            "files": files,
        }

    def window_results(self, sample: dict[str, Any], offset: float = 0.0) -> dict[str, Any]:
        """``{task: result}`` of one window's sample (a dataset item), its frame times shifted
        by ``offset`` seconds (a live window's start in the stream)."""
        preds = self._predict([sample])
        shifted = dict(sample, times=sample["times"] + offset)
        return self._read({t: _index(preds[t], 0) for t in self.tasks}, shifted)

    def _predict(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(samples)
        for t in self.tasks:
            spec = self.specs[t]
            if spec.kind == "qa" and self.questions:
                batch["targets"][spec.key("questions")] = self._questions(spec, len(samples))
        return self.runner.predict(batch)

    def _questions(self, spec: TaskSpec, n: int) -> torch.Tensor:
        slots = spec.options["questions"]
        ids = torch.zeros(slots, schema.MAX_QUESTION_TOKENS, dtype=torch.long)
        for q, text in enumerate(self.questions):
            ids[q] = torch.tensor(self.tokenizer.encode(text, schema.MAX_QUESTION_TOKENS))
        return ids.expand(n, -1, -1).clone()

    def _read(self, preds: dict[str, Any], sample: dict[str, Any]) -> dict[str, Any]:
        times = sample["times"].tolist()
        out = {}
        for t in self.tasks:
            spec = self.specs[t]
            out[t] = READERS[spec.kind](
                spec,
                preds[t],
                times=times,
                tokenizer=self.tokenizer,
                questions=self.questions,
                clip=sample["video"],
            )
        return out

    def _folder(self, name: str) -> Path:
        """This source's folder under ``--out``: a new one, shared with no other source."""
        if name not in self.folders:
            assert self.out is not None
            self.folders[name] = media.unique_folder(self.out, name, self.folders.values())
        return self.folders[name]

    def _video_keyframes(
        self,
        item: VideoInput,
        windows: list[dict[str, Any]],
        frames: list[tuple[float, torch.Tensor]],
        files: list[str],
    ) -> dict[str, Any]:
        """Each frame-scores task's keyframes over the whole video (and its summary clip)."""
        out: dict[str, Any] = {}
        for t in self.tasks:
            if self.specs[t].kind != "frame_scores":
                continue
            # overlapping windows score some frames twice: each time once, its first score
            once = {s["t"]: s for w in windows for s in reversed(w["tasks"][t]["scores"])}
            times = keyframes(sorted(once.values(), key=lambda s: s["t"]))
            out[t] = {"keyframes": times}
            if self.out is not None:
                wanted, seen, picked = set(times), set(), []
                for ts, f in frames:
                    if round(ts, 4) in wanted and round(ts, 4) not in seen:
                        seen.add(round(ts, 4))
                        picked.append(f)
                path = media.summary_clip(self._folder(item.name), t, picked, self.world.fps)
                if path is not None:
                    out[t]["summary_clip"] = path
                    files.append(path)
        return out


def _index(pred: Any, j: int) -> Any:
    """Sample ``j`` of a batched output (a tensor or a dict of tensors)."""
    if isinstance(pred, dict):
        return {k: v[j] for k, v in pred.items()}
    return pred[j]
