"""The synthetic world's label model: every latent variable of a clip and the ground truth from it.

:func:`make_labels` is a pure function of ``(WorldConfig.seed, index)``: it draws the main object
(class, colour, action and its trajectory), the distractors, the stick figure's keypoints, the
three sentiment cues, the forbidden symbol and word, the degradation and the missing modalities,
and derives every label from them: boxes, sentiment, moderation, quality, transcript, caption,
QA and per-frame importance (the rules are in :mod:`veilfed.data.synth`). Geometry is normalised
to [0, 1] and covers ``frames + next_frames`` frames, so :mod:`veilfed.data.synth_render` can
render the clip and its future at any resolution from the labels alone.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from veilfed.data import schema

if TYPE_CHECKING:
    from veilfed.data.synth import WorldConfig


def clip_id(index: int) -> str:
    return f"clip-{index:06d}"


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
    # Two decimals: the trajectories are stored to 5 decimals, so equal motions differ by ~1e-4
    # after that rounding; more digits would order equally important frames by rounding noise
    # that no rendered frame shows (and per-clip Spearman would score that noise).
    keyframes = [round(0.1 + 0.6 * m / peak, 2) for m in motion]
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
