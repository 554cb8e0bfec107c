"""Video augmentations with every spatial label following the frames.

One torchvision ``transforms.v2`` call transforms the clip, the restoration/next-frame targets,
the boxes, masks and keypoints together (as ``tv_tensors``), so all frames and labels share the
same random parameters. Afterwards boxes are clipped to the frame (objects that vanish get class
-1 and a zero box) and keypoints that leave the frame become invisible. Flips also rewrite the
labels that name a direction: action ``left``↔``right`` (``up``↔``down`` for vertical flips), the
same QA answers and words in transcript, caption and questions, and — for horizontal flips — the
``left_*``/``right_*`` keypoints (the synthetic figure's left hand is the one on the image left).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torchvision import tv_tensors as tv
from torchvision.transforms import v2

from veilfed.augment.registry import AUGMENTATIONS, Augmentation, Sample
from veilfed.data.schema import ACTIONS, ANSWERS, KEYPOINTS
from veilfed.data.text import Tokenizer
from veilfed.errors import UsageError

# Rotations beyond this would turn e.g. a "left" motion into "up"; the labels could not follow.
MAX_ROTATION_DEGREES = 30.0
_MIN_BOX_PIXELS = 1.0


def _pairs(low: float, high: float, name: str, lo: float, hi: float) -> tuple[float, float]:
    if not lo <= low <= high <= hi:
        raise UsageError(
            f"augmentation {name}: range ({low}, {high}) must satisfy {lo} <= low <= high <= {hi}"
        )
    return float(low), float(high)


def apply_spatial(sample: Sample, transform: Any, keypoints: bool = True) -> Sample:
    """Run a v2 transform on the clip and every aligned target; ``sample`` is a fresh copy.

    ``keypoints=False`` leaves keypoints to the caller: torchvision flips them as pixel indices
    (x -> W - 1 - x) while boxes and every other op use continuous coordinates (x -> W - x).
    """
    video: torch.Tensor = sample["video"]
    h, w = video.shape[-2:]
    tg = sample.get("targets", {})
    inputs: dict[str, Any] = {"video": tv.Video(video)}
    for key in ("clean", "next_frames"):
        if key in tg:
            inputs[key] = tv.Video(tg[key])
    if "segmentation" in tg:
        inputs["segmentation"] = tv.Mask(tg["segmentation"])
    if "boxes" in tg:
        abs_boxes = tg["boxes"].reshape(-1, 4) * torch.tensor([w, h, w, h])
        inputs["boxes"] = tv.BoundingBoxes(abs_boxes, format="XYXY", canvas_size=(h, w))
    if keypoints and "keypoints" in tg:
        abs_kp = tg["keypoints"].reshape(-1, 2) * torch.tensor([w, h])
        inputs["keypoints"] = tv.KeyPoints(abs_kp, canvas_size=(h, w))
    out = transform(inputs)
    sample["video"] = out["video"].as_subclass(torch.Tensor)
    oh, ow = sample["video"].shape[-2:]
    for key in ("clean", "next_frames", "segmentation"):
        if key in out:
            tg[key] = out[key].as_subclass(torch.Tensor)
    if "boxes" in out:
        b = out["boxes"].as_subclass(torch.Tensor).reshape(tg["boxes"].shape)
        b = torch.minimum(b.clamp_min(0), torch.tensor([ow, oh, ow, oh], dtype=b.dtype))
        alive = ((b[..., 2] - b[..., 0]) >= _MIN_BOX_PIXELS) & (
            (b[..., 3] - b[..., 1]) >= _MIN_BOX_PIXELS
        )
        alive &= tg["box_classes"] >= 0
        scale = torch.tensor([ow, oh, ow, oh], dtype=b.dtype)
        tg["boxes"] = torch.where(alive[..., None], b / scale, torch.zeros_like(b))
        tg["box_classes"] = torch.where(
            alive, tg["box_classes"], torch.full_like(alive, -1, dtype=torch.long)
        )
    if "keypoints" in out:
        k = out["keypoints"].as_subclass(torch.Tensor).reshape(tg["keypoints"].shape)
        k = k / torch.tensor([ow, oh], dtype=k.dtype)
        inside = ((k >= 0) & (k <= 1)).all(-1)
        tg["keypoints"] = k.clamp(0, 1)
        tg["keypoint_visible"] = tg["keypoint_visible"].bool() & inside
    return sample


def _swap(t: torch.Tensor, a: int, b: int) -> torch.Tensor:
    out = t.clone()
    out[t == a], out[t == b] = b, a
    return out


@functools.cache
def _word_id(word: str) -> int:
    """Token id of a world word; fixed because schema.WORDS come first in every vocabulary."""
    return Tokenizer().encode(word, 1)[0]


def _swap_direction(sample: Sample, a: str, b: str) -> None:
    """Relabel everything that names direction ``a`` as ``b`` and vice versa (after a flip)."""
    tg = sample.get("targets", {})
    if "action" in tg:
        tg["action"] = _swap(tg["action"], ACTIONS.index(a), ACTIONS.index(b))
    if "answers" in tg:
        tg["answers"] = _swap(tg["answers"], ANSWERS.index(a), ANSWERS.index(b))
    ia, ib = _word_id(a), _word_id(b)
    if "text" in sample:
        sample["text"] = _swap(sample["text"], ia, ib)
    for key in ("caption", "questions"):
        if key in tg:
            tg[key] = _swap(tg[key], ia, ib)


_LR_PERM = [
    KEYPOINTS.index(n.replace("left_", "right_", 1))
    if n.startswith("left_")
    else KEYPOINTS.index(n.replace("right_", "left_", 1))
    if n.startswith("right_")
    else i
    for i, n in enumerate(KEYPOINTS)
]


@AUGMENTATIONS.register("hflip")
class HorizontalFlip(Augmentation):
    """Mirror left-right; relabels left/right actions, answers, words and keypoints."""

    def apply(self, sample: Sample) -> Sample:
        sample = apply_spatial(sample, v2.RandomHorizontalFlip(p=1.0), keypoints=False)
        tg = sample.get("targets", {})
        if "keypoints" in tg:
            kp = tg["keypoints"].clone()
            kp[..., 0] = 1 - kp[..., 0]
            tg["keypoints"] = kp[..., _LR_PERM, :]
            tg["keypoint_visible"] = tg["keypoint_visible"][..., _LR_PERM]
        _swap_direction(sample, "left", "right")
        return sample


@AUGMENTATIONS.register("vflip")
class VerticalFlip(Augmentation):
    """Mirror top-bottom; relabels up/down actions, answers and words."""

    def apply(self, sample: Sample) -> Sample:
        sample = apply_spatial(sample, v2.RandomVerticalFlip(p=1.0), keypoints=False)
        tg = sample.get("targets", {})
        if "keypoints" in tg:
            kp = tg["keypoints"].clone()
            kp[..., 1] = 1 - kp[..., 1]
            tg["keypoints"] = kp
        _swap_direction(sample, "up", "down")
        return sample


@AUGMENTATIONS.register("random_resized_crop")
class RandomResizedCrop(Augmentation):
    """Crop a random area fraction in ``scale`` and resize back to the clip's size."""

    def __init__(
        self,
        scale: tuple[float, float] = (0.7, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        p: float = 0.5,
    ) -> None:
        super().__init__(p)
        self.scale = _pairs(*scale, "random_resized_crop scale", 0.05, 1.0)
        self.ratio = _pairs(*ratio, "random_resized_crop ratio", 0.1, 10.0)

    def apply(self, sample: Sample) -> Sample:
        size = tuple(sample["video"].shape[-2:])
        return apply_spatial(
            sample, v2.RandomResizedCrop(size, scale=self.scale, ratio=self.ratio, antialias=True)
        )


@AUGMENTATIONS.register("scale")
class RandomScale(Augmentation):
    """Zoom in or out around the centre by a factor in ``factor`` (borders filled with 0)."""

    def __init__(self, factor: tuple[float, float] = (0.8, 1.2), p: float = 0.5) -> None:
        super().__init__(p)
        self.factor = _pairs(*factor, "scale factor", 0.1, 10.0)

    def apply(self, sample: Sample) -> Sample:
        bilinear = v2.InterpolationMode.BILINEAR  # masks always use nearest
        return apply_spatial(
            sample, v2.RandomAffine(degrees=0, scale=self.factor, interpolation=bilinear)
        )


@AUGMENTATIONS.register("rotation")
class RandomRotation(Augmentation):
    """Rotate by a uniform angle in ``[-degrees, degrees]``; boxes become the rotated hull."""

    def __init__(self, degrees: float = 10.0, p: float = 0.5) -> None:
        super().__init__(p)
        if not 0 <= degrees <= MAX_ROTATION_DEGREES:
            raise UsageError(
                f"augmentation rotation: degrees={degrees} must be in "
                f"[0, {MAX_ROTATION_DEGREES:g}] so direction labels stay true"
            )
        self.degrees = float(degrees)

    def apply(self, sample: Sample) -> Sample:
        bilinear = v2.InterpolationMode.BILINEAR  # masks always use nearest
        return apply_spatial(sample, v2.RandomRotation(self.degrees, interpolation=bilinear))


@AUGMENTATIONS.register("color_jitter")
class ColorJitter(Augmentation):
    """Brightness/contrast/saturation/hue jitter, identical for the clip and its pixel targets.

    Hue stays small by default: colours are labels here (QA "what color"), so a large hue shift
    would make the answer wrong.
    """

    def __init__(
        self,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        hue: float = 0.02,
        p: float = 0.5,
    ) -> None:
        super().__init__(p)
        if min(brightness, contrast, saturation, hue) < 0 or hue > 0.5:
            raise UsageError("augmentation color_jitter: strengths must be >= 0 and hue <= 0.5")
        self.brightness, self.contrast, self.saturation, self.hue = (
            brightness,
            contrast,
            saturation,
            hue,
        )

    def apply(self, sample: Sample) -> Sample:
        jitter = v2.ColorJitter(self.brightness, self.contrast, self.saturation, self.hue)
        video = sample["video"]
        tg = sample.get("targets", {})
        inputs = {"video": tv.Video(video)}
        inputs.update({k: tv.Video(tg[k]) for k in ("clean", "next_frames") if k in tg})
        out = jitter(inputs)
        sample["video"] = out["video"].as_subclass(torch.Tensor).clamp(0, 1)
        for k in ("clean", "next_frames"):
            if k in out:
                tg[k] = out[k].as_subclass(torch.Tensor).clamp(0, 1)
        return sample
