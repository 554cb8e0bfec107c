"""Whether explanations point at the cause: on the synthetic world the cause is known.

Ground truth from a generated clip (``veilfed.data.synth``):

* **symbol**: moderation on clips that show the forbidden symbol and do not say the word; the
  region is the symbol's square (x in [0.82, 0.94], y in [0.78, 0.92] of the frame, widened by
  its stroke) on the frames from ``symbol_frame`` on;
* **word**: moderation on clips that say the word (with audio) and do not show the symbol; the
  region is the audio time bins overlapping the word's samples (``Clip.word_span``);
* **object**: action on every clip; the region is the main object's box on each frame;
* **modality**: on those symbol and word clips, whether modality ablation
  (``veilfed.explain.ablation``) names a modality that carries the cause (video for the
  symbol; audio or text for the word, which the transcript may also contain).

Scores: a map's share of mass inside the region, beside the region's share of the map's cells
(what a uniform random attribution scores in expectation); for modality, the fraction of clips
decided by a carrying modality beside the fraction of present modalities that carry it (a
random pick). Audio bins are treated as equal slices of the waveform (spectrogram frames are
half a hop off at most: 16 ms, under a tenth of the word).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from veilfed.data.dataset import ClipDataset, MemorySource, collate
from veilfed.data.synth import Clip, WorldConfig, generate_clip
from veilfed.explain.ablation import ablate
from veilfed.explain.attribute import attribute, present
from veilfed.explain.target import Target

SYMBOL_BOX = (0.82, 0.78, 0.94, 0.92)  # x0, y0, x1, y1 (veilfed.data.synth_render)
CASES = ("symbol", "word", "object")


def _box_mask(box: tuple[float, ...], h: int, w: int, pad: float = 0.0) -> Tensor:
    ys = (torch.arange(h) + 0.5) / h
    xs = (torch.arange(w) + 0.5) / w
    inside_y = (ys >= box[1] - pad) & (ys <= box[3] + pad)
    inside_x = (xs >= box[0] - pad) & (xs <= box[2] + pad)
    return inside_y[:, None] & inside_x[None, :]


def symbol_region(labels: dict[str, Any], frames: int, h: int, w: int) -> Tensor:
    """bool [T, H, W]: the symbol's square on the frames it is shown."""
    stroke = 0.6 / min(h, w) + 0.012
    region = torch.zeros(frames, h, w, dtype=torch.bool)
    region[labels["forbidden"]["symbol_frame"] :] = _box_mask(SYMBOL_BOX, h, w, stroke)
    return region


def object_region(labels: dict[str, Any], frames: int, h: int, w: int) -> Tensor:
    """bool [T, H, W]: the main object's box on each frame."""
    boxes = labels["objects"][0]["boxes"]
    return torch.stack([_box_mask(tuple(boxes[t]), h, w) for t in range(frames)])


def word_region(span: tuple[int, int], samples: int, bins: int) -> Tensor:
    """bool [bins]: bins (equal slices of ``samples``) that overlap the word's ``span``."""
    edges = np.linspace(0, samples, bins + 1)
    return torch.tensor([(edges[i] < span[1]) and (edges[i + 1] > span[0]) for i in range(bins)])


def share(heat: Tensor, region: Tensor) -> float:
    """The share of ``heat``'s mass inside ``region`` (same shape)."""
    return float(heat[region].sum() / heat.sum().clamp(min=1e-12))


def _case(clip: Clip) -> str | None:
    f = clip.labels["forbidden"]
    if f["symbol"] and not f["word"]:
        return "symbol"
    if f["word"] and not f["symbol"] and clip.word_span is not None:
        return "word"
    return None


def clips(world: WorldConfig, per_case: int, limit: int = 5000) -> Iterator[tuple[str, Clip]]:
    """Up to ``per_case`` clips of the symbol and word cases (and as many for object: the
    first clips), in index order of ``world``."""
    found = dict.fromkeys(CASES, 0)
    for index in range(limit):
        clip = generate_clip(world, index)
        for case in (_case(clip), "object"):
            if case is not None and found[case] < per_case:
                found[case] += 1
                yield case, clip
        if all(n >= per_case for n in found.values()):
            return


def _batch(clip: Clip, world: WorldConfig, specs: dict[str, Any]) -> dict[str, Any]:
    dataset = ClipDataset(MemorySource([clip]), world, tasks=specs)
    return collate([dataset[0]])


def localisation(
    model: Any, world: WorldConfig, per_case: int = 8, method: str = "integrated_gradients"
) -> dict[str, Any]:
    """The scores of the module docstring over ``per_case`` clips of each case of ``world``
    (use a world seed training never saw), for a model with ``moderation`` (binary) and
    ``action`` (classification) tasks."""
    specs = dict(model.task_specs)
    flagged = Target("moderation", "binary", 0, "flagged")
    rows: dict[str, list[tuple[float, float]]] = {c: [] for c in CASES}
    decided: list[tuple[float, float]] = []
    for case, clip in clips(world, per_case):
        batch = _batch(clip, world, specs)
        t, _, h, w = batch["video"].shape[1:]
        if case == "object":
            with torch.no_grad():
                index = int(model(batch)["action"][0].argmax())
            target = Target("action", "classification", index, str(index))
            attr = attribute(model, batch, target, method)
            region = object_region(clip.labels, t, h, w)
            rows[case].append((share(attr.video, region), float(region.float().mean())))
            continue
        attr = attribute(model, batch, flagged, method)
        if case == "symbol":
            region = symbol_region(clip.labels, t, h, w)
            rows[case].append((share(attr.video, region), float(region.float().mean())))
            carrying = {"video"}
        else:
            assert clip.word_span is not None and attr.audio is not None
            bins = attr.audio.shape[0]
            region = word_region(clip.word_span, batch["audio"].shape[1], bins)
            heat = attr.audio.sum(dim=1)
            rows[case].append((share(heat, region), float(region.float().mean())))
            carrying = {"audio", "text"}
        modalities = present(model, batch)
        choice = ablate(model, batch, flagged)["decided"]
        chance = len(carrying & set(modalities)) / max(1, len(modalities))
        decided.append((float(choice in carrying), chance))
    out: dict[str, Any] = {}
    for case, pairs in [*rows.items(), ("modality", decided)]:
        if pairs:
            scores, randoms = np.array(pairs).T
            out[case] = {
                "score": round(float(scores.mean()), 4),
                "random": round(float(randoms.mean()), 4),
                "clips": len(pairs),
            }
    return out
