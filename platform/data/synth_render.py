"""Renderers of the synthetic world: video frames, instance masks and audio from a clip's labels.

Each renderer is a function of the labels (plus a seeded generator for noise), so the clean frames
and masks of any clip, at any resolution and for any frame range (the clip's or its next frames),
can be re-created exactly from the sidecar. :func:`degrade` applies the clip's known degradation
(noise, blur, blocking) to the clean frames; :func:`synthesize_audio` encodes class as pitch,
action as pulse rhythm and the pitch sentiment cue as contour.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from veilfed.data import schema

_CLASS_PITCH = (220.0, 277.2, 349.2, 440.0)  # Hz per object class: pitch <-> class
_FIGURE_RGB = np.array([150, 150, 150], dtype=np.float32)
_SYMBOL_RGB = np.array([255, 0, 0], dtype=np.float32)
_PALETTES = {  # top and bottom colours of the background gradient per palette cue
    -1: ((20, 40, 90), (40, 80, 120)),  # cool
    0: ((70, 70, 70), (110, 110, 110)),  # neutral
    1: ((120, 60, 20), (160, 100, 40)),  # warm
}


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys = (np.arange(height) + 0.5) / height
    xs = (np.arange(width) + 0.5) / width
    return np.meshgrid(xs, ys)


def _shape_mask(
    shape: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, s: float, angle: float
) -> np.ndarray:
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= s * s
    c, si = math.cos(angle), math.sin(angle)
    rx, ry = c * dx + si * dy, -si * dx + c * dy  # rotate into the shape's frame
    if shape == "square":
        return np.maximum(np.abs(rx), np.abs(ry)) <= s
    if shape == "diamond":
        return np.abs(rx) + np.abs(ry) <= s
    # triangle: apex (0, -s), base at y = 0.5 s spanning |x| <= 0.9 s
    return (ry <= 0.5 * s) & (np.abs(rx) <= 0.9 * s * (ry + s) / (1.5 * s))


def _segment_mask(
    x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, width: float
) -> np.ndarray:
    ab = b - a
    denom = float(ab @ ab) or 1e-12
    t = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1]) / denom, 0.0, 1.0)
    px, py = a[0] + t * ab[0], a[1] + t * ab[1]
    return (x - px) ** 2 + (y - py) ** 2 <= width * width


def _frame_range(labels: dict[str, Any], frames: range | None) -> range:
    world = labels["world"]
    return frames if frames is not None else range(world["frames"])


def instance_masks(
    labels: dict[str, Any], height: int, width: int, frames: range | None = None
) -> np.ndarray:
    """uint8 [n, H, W]: 0 background, i + 1 for ``labels["objects"][i]`` (visible pixels)."""
    frames = _frame_range(labels, frames)
    x, y = _grid(height, width)
    out = np.zeros((len(frames), height, width), dtype=np.uint8)
    for k, t in enumerate(frames):
        for i in labels["draw_order"]:
            obj = labels["objects"][i]
            shape = schema.OBJECT_CLASSES[obj["class"]]
            m = _shape_mask(
                shape, x, y, obj["cx"][t], obj["cy"][t], obj["size"][t], obj["angle"][t]
            )
            out[k][m] = i + 1
    return out


def render(
    labels: dict[str, Any], height: int, width: int, frames: range | None = None
) -> np.ndarray:
    """Clean frames uint8 [n, H, W, 3] of the clip at any resolution (restoration target)."""
    frames = _frame_range(labels, frames)
    x, y = _grid(height, width)
    top, bottom = (
        np.array(c, dtype=np.float32) for c in _PALETTES[labels["sentiment_cues"]["palette"]]
    )
    background = top + (bottom - top) * y[..., None].astype(np.float32)
    masks = instance_masks(labels, height, width, frames)
    colors = np.array([schema.COLOR_RGB[o["color"]] for o in labels["objects"]], np.float32)
    kps = np.asarray(labels["keypoints"])
    forbidden = labels["forbidden"]
    line = 0.6 / min(height, width) + 0.012
    out = np.empty((len(frames), height, width, 3), dtype=np.uint8)
    for k, t in enumerate(frames):
        img = background.copy()
        fig = np.zeros_like(x, dtype=bool)
        for a, b in schema.BONES:
            fig |= _segment_mask(x, y, kps[t, a], kps[t, b], line)
        head = kps[t, 0]
        fig |= (x - head[0]) ** 2 + (y - head[1]) ** 2 <= (2.5 * line) ** 2
        img[fig] = _FIGURE_RGB
        obj = masks[k] > 0
        img[obj] = colors[masks[k][obj] - 1]
        if forbidden["symbol"] and t >= forbidden["symbol_frame"]:
            p, q = np.array([0.82, 0.78]), np.array([0.94, 0.92])
            sym = _segment_mask(x, y, p, q, line) | _segment_mask(
                x, y, np.array([p[0], q[1]]), np.array([q[0], p[1]]), line
            )
            img[sym] = _SYMBOL_RGB
        out[k] = img.clip(0, 255).astype(np.uint8)
    return out


def degrade(frames: np.ndarray, kind: str, level: float, rng: np.random.Generator) -> np.ndarray:
    """Apply a known degradation to uint8 [T, H, W, 3] frames."""
    if kind == "none" or level <= 0:
        return frames
    f = frames.astype(np.float32)
    if kind == "noise":
        f = f + rng.normal(0.0, 60.0 * level, size=f.shape)
    elif kind == "blur":
        radius = max(1, round(3 * level))
        kernel = np.ones(2 * radius + 1, dtype=np.float32) / (2 * radius + 1)
        for axis in (1, 2):  # separable box blur, edges replicated
            pad = [(0, 0)] * 4
            pad[axis] = (radius, radius)
            p = np.pad(f, pad, mode="edge")
            f = sum(
                kernel[i] * np.take(p, range(i, i + f.shape[axis]), axis=axis)
                for i in range(kernel.size)
            )
    elif kind == "blocking":
        b = 2 ** max(1, round(1 + 2 * level))  # 4 or 8 pixel blocks
        t, h, w, c = f.shape
        hb, wb = h // b * b, w // b * b
        core = f[:, :hb, :wb].reshape(t, hb // b, b, wb // b, b, c).mean(axis=(2, 4))
        f[:, :hb, :wb] = np.repeat(np.repeat(core, b, axis=1), b, axis=2)
    return f.clip(0, 255).astype(np.uint8)


def word_span(
    labels: dict[str, Any], sample_rate: int, n_samples: int, rng: np.random.Generator
) -> tuple[int, int] | None:
    """Where the spoken forbidden word (a quarter-second buzz) lies in the audio, as sample
    indices ``(start, stop)``, or None when the clip has none. Draws from ``rng``: call it
    right before :func:`synthesize_audio` with the same generator."""
    if not labels["forbidden"]["word"]:
        return None
    start = int(rng.integers(0, max(1, n_samples - sample_rate // 4)))
    return start, min(n_samples, start + sample_rate // 4)


def synthesize_audio(
    labels: dict[str, Any],
    sample_rate: int,
    n_samples: int,
    noise: float,
    rng: np.random.Generator,
    span: tuple[int, int] | None = None,
) -> np.ndarray:
    """float32 [S]: pitch <-> class, pulse rhythm <-> action, contour <-> sentiment cue; the
    forbidden word's buzz over ``span`` (:func:`word_span`)."""
    t = np.arange(n_samples) / sample_rate
    u = t / max(t[-1], 1e-9)
    f0 = _CLASS_PITCH[labels["object_class"]]
    freq = f0 * (1.0 + 0.25 * labels["sentiment_cues"]["pitch"] * (u - 0.5))
    phase = 2 * math.pi * np.cumsum(freq) / sample_rate
    rate = 1.0 + 0.75 * labels["action"]  # pulses per second encode the action
    envelope = 0.55 + 0.45 * np.sign(np.sin(2 * math.pi * rate * t))
    wave = 0.4 * envelope * np.sin(phase)
    if span is not None:
        seg = slice(*span)
        wave[seg] += 0.3 * np.sign(np.sin(2 * math.pi * 1200.0 * t[seg]))
    wave += rng.normal(0.0, noise, size=n_samples)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)
