"""Each head kind's evaluation output (``MultiTaskModel.predict``) as a JSON result.

A reader takes one sample's output of one task and the window's frame times (seconds in the
source file) and returns a JSON-ready dict (the schema is in docs/inference.md). Clip-level kinds
also have a *score* (class probabilities, a flag's probability, a value) that a video's windows
average into the video-level result: :func:`clip_scores`, then :func:`describe_scores`.

Thresholds: a flag or a multilabel class applies at probability > 0.5; a detection slot is a box
when its most likely class is not "no object"; a segmentation pixel takes its most likely class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from veilfed.data.text import Tokenizer
from veilfed.tasks import TaskSpec

CLIP_KINDS = ("classification", "binary", "multilabel", "regression")
TOP = 3  # classes listed per classification result
Reader = Callable[..., dict[str, Any]]
READERS: dict[str, Reader] = {}


def reader(kind: str) -> Callable[[Reader], Reader]:
    def deco(fn: Reader) -> Reader:
        READERS[kind] = fn
        return fn

    return deco


def _r(x: float) -> float:
    return round(float(x), 4)


def clip_scores(spec: TaskSpec, pred: torch.Tensor) -> torch.Tensor:
    """What a clip-level task's windows average: probabilities, or the regressed value."""
    if spec.kind == "classification":
        return pred.float().softmax(-1)
    if spec.kind in ("binary", "multilabel"):
        return pred.float().reshape(-1).sigmoid()
    return pred.float().reshape(-1)


def describe_scores(spec: TaskSpec, scores: torch.Tensor) -> dict[str, Any]:
    """The result of a clip-level task from :func:`clip_scores` (of a window or a video)."""
    if spec.kind == "classification":
        order = scores.argsort(descending=True).tolist()
        top = [{"class": spec.classes[k], "probability": _r(scores[k])} for k in order[:TOP]]
        return {"class": top[0]["class"], "probability": top[0]["probability"], "top": top}
    if spec.kind == "binary":
        p = float(scores[0])
        return {"flag": p > 0.5, "probability": _r(p)}
    if spec.kind == "multilabel":
        probs = {c: _r(p) for c, p in zip(spec.classes, scores.tolist(), strict=True)}
        return {"labels": [c for c, p in probs.items() if p > 0.5], "probabilities": probs}
    lo, hi = spec.options["range"]
    return {"value": _r(scores[0]), "range": [lo, hi]}


def _clip_level(spec: TaskSpec, pred: torch.Tensor, **_: Any) -> dict[str, Any]:
    return describe_scores(spec, clip_scores(spec, pred))


READERS.update(dict.fromkeys(CLIP_KINDS, _clip_level))


def _time(times: Sequence[float], i: int) -> float:
    return _r(times[min(i, len(times) - 1)]) if len(times) else 0.0


@reader("detection")
def detection(spec: TaskSpec, pred: dict[str, torch.Tensor], times: Sequence[float], **_: Any):
    probs = pred["logits"].float().softmax(-1)  # [T, N, C + 1], last: no object
    frames = []
    for i in range(probs.shape[0]):
        score, cls = probs[i].max(-1)
        boxes = [
            {
                "class": spec.classes[int(c)],
                "score": _r(s),
                "box": [_r(v) for v in pred["boxes"][i, j].tolist()],
            }
            for j, (s, c) in enumerate(zip(score, cls, strict=True))
            if int(c) < len(spec.classes)
        ]
        frames.append({"t": _time(times, i), "boxes": boxes})
    return {"frames": frames}


@reader("segmentation")
def segmentation(spec: TaskSpec, pred: torch.Tensor, times: Sequence[float], **_: Any):
    labels = pred.float().argmax(1)  # [T, H, W]: 0 background, c + 1 class c
    frames = []
    for i in range(labels.shape[0]):
        counts = torch.bincount(labels[i].flatten(), minlength=len(spec.classes) + 1)
        share = counts.double() / counts.sum()
        area = {c: _r(share[k + 1]) for k, c in enumerate(spec.classes) if share[k + 1] > 0}
        frames.append({"t": _time(times, i), "area": area})
    return {"frames": frames}


@reader("keypoints")
def keypoints(spec: TaskSpec, pred: torch.Tensor, times: Sequence[float], **_: Any):
    frames = [
        {
            "t": _time(times, i),
            "points": {c: [_r(v) for v in pred[i, k].tolist()] for k, c in enumerate(spec.classes)},
        }
        for i in range(pred.shape[0])
    ]
    return {"frames": frames}


@reader("frame_scores")
def frame_scores(spec: TaskSpec, pred: torch.Tensor, times: Sequence[float], **_: Any):
    scores = [{"t": _time(times, i), "score": _r(s)} for i, s in enumerate(pred.tolist())]
    return {"scores": scores, "keyframes": keyframes(scores)}


def keyframes(scores: list[dict[str, float]], share: float = 0.25) -> list[float]:
    """Times of the top ``share`` of frames by score (at least one), in time order."""
    k = max(1, round(share * len(scores)))
    best = sorted(scores, key=lambda s: (-s["score"], s["t"]))[:k]
    return sorted(s["t"] for s in best)


@reader("caption")
def caption(spec: TaskSpec, pred: torch.Tensor, tokenizer: Tokenizer, **_: Any):
    return {"text": tokenizer.decode(int(v) for v in pred.tolist())}


@reader("qa")
def qa(spec: TaskSpec, pred: torch.Tensor, questions: Sequence[str] = (), **_: Any):
    if not questions:
        return {"answers": [], "note": "no question asked; pass --question TEXT"}
    probs = pred.float().softmax(-1)  # [Q, answers]
    answers = []
    for q, text in enumerate(questions[: probs.shape[0]]):
        p, k = probs[q].max(-1)
        answers.append({"question": text, "answer": spec.classes[int(k)], "probability": _r(p)})
    return {"answers": answers}


@reader("restoration")
def restoration(spec: TaskSpec, pred: torch.Tensor, clip: torch.Tensor, **_: Any):
    change = (pred.float() - clip.float()).abs().mean()
    return {"frames": int(pred.shape[0]), "mean_abs_change": _r(change)}


@reader("next_frame")
def next_frame(spec: TaskSpec, pred: torch.Tensor, times: Sequence[float], **_: Any):
    return {"frames": int(pred.shape[0]), "after_t": _time(times, len(times) - 1)}
