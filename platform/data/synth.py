"""A seeded synthetic multimodal world with exact ground truth for every task veilfed learns.

Rules of the world (each clip is a pure function of ``(WorldConfig.seed, index)``):

* **Video.** A background gradient whose palette is warm, neutral or cool; one *main object*
  (circle, square, triangle or diamond, in one of six colours) moving by an *action*
  (static, left, right, up, down, rotate, grow, shrink, bounce); 0–2 static *distractor* objects of
  other classes; a grey stick *figure* with 7 keypoints waving its arms; on some clips a red "X"
  forbidden symbol appears in a corner part-way through. The clip may be degraded (blur, noise or
  8×8 blocking) at a known level; the clean clip is the restoration target.
* **Audio** (16 kHz mono). A tone whose base pitch encodes the main object's class, pulsed at a
  rhythm that encodes the action, with a pitch contour (rising, flat, falling) that carries one
  sentiment cue; a spoken forbidden word is a 1.2 kHz buzz.
* **Text.** A transcript that mentions colour, class and action each only some of the time,
  always carries a sentiment word, and may contain the forbidden word.
* **Sentiment** is the sign of palette + pitch contour + word cue (each −1, 0 or +1), so no single
  modality can get it fully right: fusion must matter.
* **Moderation** is on when the symbol is shown or the forbidden word is said.
* **Quality** is ``1 − 0.8 · level`` for a degraded clip, 1 for a clean one.
* **QA**: colour of the main object, number of objects, direction (action), forbidden content.
* **Summary**: per-frame importance from the main object's motion plus the symbol's appearance.
* **Next frames**: the world keeps evolving for ``next_frames`` frames after the clip.

Labels store geometry normalised to [0, 1], so :func:`render` and :func:`instance_masks`
re-create clean frames and masks exactly at any resolution: the sidecar is the whole ground truth.
Per-modality noise and missing modalities are configurable in :class:`WorldConfig`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from veilfed.data import schema
from veilfed.errors import UsageError

AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_CLASS_PITCH = (220.0, 277.2, 349.2, 440.0)  # Hz per object class: pitch <-> class
_FIGURE_RGB = np.array([150, 150, 150], dtype=np.float32)
_SYMBOL_RGB = np.array([255, 0, 0], dtype=np.float32)
_PALETTES = {  # top and bottom colours of the background gradient per palette cue
    -1: ((20, 40, 90), (40, 80, 120)),  # cool
    0: ((70, 70, 70), (110, 110, 110)),  # neutral
    1: ((120, 60, 20), (160, 100, 40)),  # warm
}


@dataclass(frozen=True)
class WorldConfig:
    """Size, seed, noise and missing-modality knobs of a synthetic world."""

    frames: int = schema.DEFAULT_FRAMES
    height: int = schema.DEFAULT_SIZE
    width: int = schema.DEFAULT_SIZE
    fps: int = schema.DEFAULT_FPS
    sample_rate: int = schema.SAMPLE_RATE
    next_frames: int = schema.NEXT_FRAMES
    seed: int = 0
    video_noise: float = 0.0  # extra pixel noise std (0-1 scale) on top of degradation
    audio_noise: float = 0.02  # additive noise std on the waveform
    text_noise: float = 0.1  # probability a transcript word is replaced by a random word
    p_missing_audio: float = 0.0
    p_missing_text: float = 0.0
    p_degraded: float = 0.5
    p_forbidden: float = 0.2

    def __post_init__(self) -> None:
        for name in ("frames", "height", "width", "fps"):
            if getattr(self, name) < 1:
                raise UsageError(f"world.{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:  # numpy seeds are non-negative
            raise UsageError(f"world.seed must be >= 0, got {self.seed}")
        if self.height % 2 or self.width % 2 or self.height < 16 or self.width < 16:
            raise UsageError(
                f"world size {self.height}x{self.width}: height and width must be even and >= 16"
            )
        if self.sample_rate not in AAC_RATES:
            raise UsageError(
                f"world.sample_rate {self.sample_rate} is not an AAC rate; use one of {AAC_RATES}"
            )
        for name in (
            "p_missing_audio",
            "p_missing_text",
            "p_degraded",
            "p_forbidden",
            "text_noise",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"world.{name} must be in [0, 1], got {getattr(self, name)}")

    @property
    def audio_samples(self) -> int:
        return self.frames * self.sample_rate // self.fps

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "world") -> WorldConfig:
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise UsageError(f"{source}: unknown field {unknown[0]!r}; valid: {', '.join(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Clip:
    """One generated clip: degraded frames shown to the model, audio, transcript, labels."""

    clip_id: str
    video: np.ndarray  # uint8 [T, H, W, 3]
    audio: np.ndarray | None  # float32 [S] or None when the clip has no audio stream
    labels: dict[str, Any]


def clip_id(index: int) -> str:
    return f"clip-{index:06d}"


# --------------------------------------------------------------------------- labels


def _trajectory(action: str, rng: np.random.Generator, n: int) -> dict[str, list[float]]:
    """Main object centre, half-size and angle per frame for ``n`` frames."""
    s0 = float(rng.uniform(0.09, 0.13))
    cx0, cy0 = (float(v) for v in rng.uniform(0.35, 0.65, size=2))
    travel = 0.4
    u = np.arange(n) / max(n - 1, 1)
    cx = np.full(n, cx0)
    cy = np.full(n, cy0)
    size = np.full(n, s0)
    angle = np.zeros(n)
    if action == "left":
        cx = cx0 + travel / 2 - travel * u
    elif action == "right":
        cx = cx0 - travel / 2 + travel * u
    elif action == "up":
        cy = cy0 + travel / 2 - travel * u
    elif action == "down":
        cy = cy0 - travel / 2 + travel * u
    elif action == "rotate":
        angle = 2 * math.pi * u * float(rng.choice([-1, 1]))
    elif action == "grow":
        size = s0 * (0.7 + 0.9 * u)
    elif action == "shrink":
        size = s0 * (1.6 - 0.9 * u)
    elif action == "bounce":
        cy = cy0 + 0.15 - 0.3 * np.abs(np.sin(2 * math.pi * u))
    return {
        "cx": cx.round(5).tolist(),
        "cy": cy.round(5).tolist(),
        "size": size.round(5).tolist(),
        "angle": angle.round(5).tolist(),
    }


def _vertices(shape: str, cx: float, cy: float, s: float, angle: float) -> np.ndarray:
    """Polygon vertices (normalised) of a shape; a circle is bounded by its square."""
    base = {
        "circle": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
        "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
        "diamond": [(0, -1), (1, 0), (0, 1), (-1, 0)],
        "triangle": [(0, -1), (0.9, 0.5), (-0.9, 0.5)],
    }[shape]
    pts = np.asarray(base, dtype=np.float64) * s
    if shape != "circle":
        c, si = math.cos(angle), math.sin(angle)
        pts = pts @ np.array([[c, si], [-si, c]])
    return pts + np.array([cx, cy])


def _box(shape: str, cx: float, cy: float, s: float, angle: float) -> list[float]:
    v = _vertices(shape, cx, cy, s, angle)
    lo = np.clip(v.min(axis=0), 0.0, 1.0)
    hi = np.clip(v.max(axis=0), 0.0, 1.0)
    return [round(float(x), 5) for x in (lo[0], lo[1], hi[0], hi[1])]


def _figure_keypoints(fx: float, fy: float, scale: float, phase: float, n: int) -> np.ndarray:
    """[n, P, 2] keypoints of the stick figure waving both arms."""
    kp = np.zeros((n, len(schema.KEYPOINTS), 2))
    for t in range(n):
        wave = 0.9 * math.sin(phase + 2 * math.pi * t / 8)
        hip = (fx, fy)
        neck = (fx, fy - 0.12 * scale)
        head = (fx, fy - 0.18 * scale)
        la, ra = math.pi + 0.6 + wave * 0.5, -0.6 - wave * 0.5
        arm = 0.1 * scale
        lhand = (neck[0] + arm * math.cos(la), neck[1] + arm * math.sin(la))
        rhand = (neck[0] + arm * math.cos(ra), neck[1] + arm * math.sin(ra))
        lfoot = (fx - 0.05 * scale, fy + 0.12 * scale)
        rfoot = (fx + 0.05 * scale, fy + 0.12 * scale)
        kp[t] = [head, neck, hip, lhand, rhand, lfoot, rfoot]
    return kp


def make_labels(cfg: WorldConfig, index: int) -> dict[str, Any]:
    """Draw every latent variable of clip ``index`` and derive all ground truth from them."""
    rng = np.random.default_rng([cfg.seed, index])
    n_total = cfg.frames + cfg.next_frames
    action_i = int(rng.integers(len(schema.ACTIONS)))
    action = schema.ACTIONS[action_i]
    cls_i = int(rng.integers(len(schema.OBJECT_CLASSES)))
    color = schema.COLORS[int(rng.integers(len(schema.COLORS)))]

    objects = [{"class": cls_i, "color": color, **_trajectory(action, rng, n_total)}]
    n_distractors = int(rng.integers(0, schema.MAX_OBJECTS))
    other_classes = [c for c in range(len(schema.OBJECT_CLASSES)) if c != cls_i]
    for slot, c in enumerate(rng.permutation(other_classes)[:n_distractors]):
        # Distractors sit in the top corners; the figure lives bottom-left.
        x = 0.16 if slot == 0 else 0.84
        s = float(rng.uniform(0.07, 0.09))
        objects.append(
            {
                "class": int(c),
                "color": schema.COLORS[int(rng.integers(len(schema.COLORS)))],
                "cx": [x] * n_total,
                "cy": [0.16] * n_total,
                "size": [round(s, 5)] * n_total,
                "angle": [0.0] * n_total,
            }
        )
    draw_order = list(range(1, len(objects))) + [0]  # main object on top
    for obj in objects:
        shape = schema.OBJECT_CLASSES[obj["class"]]
        obj["boxes"] = [
            _box(shape, obj["cx"][t], obj["cy"][t], obj["size"][t], obj["angle"][t])
            for t in range(n_total)
        ]

    fig_scale = float(rng.uniform(0.8, 1.0))
    fig_x, fig_y = float(rng.uniform(0.12, 0.2)), float(rng.uniform(0.72, 0.8))
    keypoints = _figure_keypoints(
        fig_x, fig_y, fig_scale, float(rng.uniform(0, 2 * math.pi)), n_total
    )

    palette, contour, word = (int(v) for v in rng.integers(-1, 2, size=3))
    total = palette + contour + word
    sentiment = 0 if total < 0 else (1 if total == 0 else 2)

    forbidden_symbol = bool(rng.random() < cfg.p_forbidden / 2)
    forbidden_word = bool(rng.random() < cfg.p_forbidden / 2)
    symbol_frame = int(rng.integers(cfg.frames // 4, max(cfg.frames // 4 + 1, cfg.frames - 2)))

    degraded = bool(rng.random() < cfg.p_degraded)
    degradation = (
        schema.DEGRADATIONS[int(rng.integers(1, len(schema.DEGRADATIONS)))] if degraded else "none"
    )
    level = round(float(rng.uniform(0.2, 1.0)), 4) if degraded else 0.0

    has_audio = bool(rng.random() >= cfg.p_missing_audio)
    has_text = bool(rng.random() >= cfg.p_missing_text)
    transcript = (
        _transcript(rng, cfg, color, schema.OBJECT_CLASSES[cls_i], action, word, forbidden_word)
        if has_text
        else ""
    )
    caption = f"a {color} {schema.OBJECT_CLASSES[cls_i]} moves {action} while a figure waves"
    main_shape = schema.OBJECT_CLASSES[cls_i]
    qa = [
        {"type": "color", "question": f"what color is the {main_shape}", "answer": color},
        {"type": "count", "question": "how many objects are there", "answer": str(len(objects))},
        {"type": "direction", "question": f"which way does the {main_shape} go", "answer": action},
        {
            "type": "forbidden",
            "question": "is there any forbidden content here",
            "answer": "yes" if (forbidden_symbol or forbidden_word) else "no",
        },
    ]
    main = objects[0]
    motion = [0.0] + [
        math.hypot(main["cx"][t] - main["cx"][t - 1], main["cy"][t] - main["cy"][t - 1])
        + abs(main["size"][t] - main["size"][t - 1])
        + abs(main["angle"][t] - main["angle"][t - 1]) * main["size"][t]
        for t in range(1, cfg.frames)
    ]
    peak = max(motion) or 1.0
    keyframes = [round(0.1 + 0.6 * m / peak, 4) for m in motion]
    if forbidden_symbol:
        keyframes[symbol_frame] = 1.0

    return {
        "clip_id": clip_id(index),
        "synthetic": True,
        "world": cfg.to_dict(),
        "index": index,
        "action": action_i,
        "object_class": cls_i,
        "color": color,
        "objects": objects,
        "draw_order": draw_order,
        "keypoints": keypoints.round(5).tolist(),
        "sentiment": sentiment,
        "sentiment_cues": {"palette": palette, "pitch": contour, "word": word},
        "moderation": int(forbidden_symbol or forbidden_word),
        "forbidden": {
            "symbol": forbidden_symbol,
            "word": forbidden_word,
            "symbol_frame": symbol_frame,
        },
        "degradation": degradation,
        "degradation_level": level,
        "quality": round(1.0 - 0.8 * level, 4),
        "modalities": {"video": True, "audio": has_audio, "text": has_text},
        "transcript": transcript,
        "caption": caption,
        "qa": qa,
        "keyframes": keyframes,
    }


def _transcript(
    rng: np.random.Generator,
    cfg: WorldConfig,
    color: str,
    shape: str,
    action: str,
    word_cue: int,
    forbidden: bool,
) -> str:
    words = ["look", "at", "this"]
    if rng.random() < 0.6:
        words.append(color)
    words.append(shape if rng.random() < 0.6 else "shapes")
    if rng.random() < 0.6:
        words += ["moving", action]
    words += ["the", "scene", "feels", str(rng.choice(schema.SENTIMENT_WORDS[word_cue]))]
    if forbidden:
        words.insert(int(rng.integers(0, len(words) + 1)), schema.FORBIDDEN_WORD)
    protected = {schema.FORBIDDEN_WORD}
    vocab = [w for w in schema.WORDS if w not in protected]
    return " ".join(
        str(rng.choice(vocab)) if (w not in protected and rng.random() < cfg.text_noise) else w
        for w in words
    )


# --------------------------------------------------------------------------- rendering


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


def synthesize_audio(
    labels: dict[str, Any], sample_rate: int, n_samples: int, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """float32 [S]: pitch <-> class, pulse rhythm <-> action, contour <-> sentiment cue."""
    t = np.arange(n_samples) / sample_rate
    u = t / max(t[-1], 1e-9)
    f0 = _CLASS_PITCH[labels["object_class"]]
    freq = f0 * (1.0 + 0.25 * labels["sentiment_cues"]["pitch"] * (u - 0.5))
    phase = 2 * math.pi * np.cumsum(freq) / sample_rate
    rate = 1.0 + 0.75 * labels["action"]  # pulses per second encode the action
    envelope = 0.55 + 0.45 * np.sign(np.sin(2 * math.pi * rate * t))
    wave = 0.4 * envelope * np.sin(phase)
    if labels["forbidden"]["word"]:
        start = int(rng.integers(0, max(1, n_samples - sample_rate // 4)))
        seg = slice(start, start + sample_rate // 4)
        wave[seg] += 0.3 * np.sign(np.sin(2 * math.pi * 1200.0 * t[seg]))
    wave += rng.normal(0.0, noise, size=n_samples)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def generate_clip(cfg: WorldConfig, index: int) -> Clip:
    """The clip ``index`` of world ``cfg``: same inputs, same bytes of ground truth and media."""
    labels = make_labels(cfg, index)
    rng = np.random.default_rng([cfg.seed, index, 1])
    frames = render(labels, cfg.height, cfg.width)
    frames = degrade(frames, labels["degradation"], labels["degradation_level"], rng)
    if cfg.video_noise > 0:
        noisy = frames.astype(np.float32) + rng.normal(0, 255 * cfg.video_noise, frames.shape)
        frames = noisy.clip(0, 255).astype(np.uint8)
    audio = None
    if labels["modalities"]["audio"]:
        audio = synthesize_audio(labels, cfg.sample_rate, cfg.audio_samples, cfg.audio_noise, rng)
    return Clip(labels["clip_id"], frames, audio, labels)


def iter_world(cfg: WorldConfig, n: int, start: int = 0) -> Iterator[Clip]:
    """Clips ``start .. start + n - 1`` of the world, generated lazily."""
    for index in range(start, start + n):
        yield generate_clip(cfg, index)
