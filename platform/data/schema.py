"""The synthetic world's vocabulary and the sample/batch contract shared by data, model and FL.

Everything that must agree between the generator, the dataset, the model heads and the federated
layers lives here: class lists, task names, tensor shapes. Change it here, nowhere else.
"""

from __future__ import annotations

MODALITIES: tuple[str, ...] = ("video", "audio", "text")

ACTIONS: tuple[str, ...] = (
    "static",
    "left",
    "right",
    "up",
    "down",
    "rotate",
    "grow",
    "shrink",
    "bounce",
)
OBJECT_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "white")
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 220, 40),
    "purple": (160, 60, 200),
    "white": (240, 240, 240),
}
# Default world geometry (configurable through WorldConfig).
DEFAULT_FRAMES = 16
DEFAULT_SIZE = 64
DEFAULT_FPS = 8
SAMPLE_RATE = 16_000
NEXT_FRAMES = 4  # held-out future frames for generation
MAX_OBJECTS = 3  # main object + up to 2 distractors
MAX_TEXT_TOKENS = 24
MAX_CAPTION_TOKENS = 16
MAX_QUESTION_TOKENS = 10

SENTIMENTS: tuple[str, ...] = ("negative", "neutral", "positive")
DEGRADATIONS: tuple[str, ...] = ("none", "blur", "noise", "blocking")
# Articulated stick figure: pose keypoints, in this order, and the bones drawn between them.
KEYPOINTS: tuple[str, ...] = (
    "head",
    "neck",
    "hip",
    "left_hand",
    "right_hand",
    "left_foot",
    "right_foot",
)
BONES: tuple[tuple[int, int], ...] = ((0, 1), (1, 2), (1, 3), (1, 4), (2, 5), (2, 6))
# Moderation: this word in the transcript/audio or the "forbidden" X symbol on screen flags a clip.
FORBIDDEN_WORD = "zorg"
SENTIMENT_WORDS: dict[int, tuple[str, ...]] = {
    -1: ("awful", "gloomy", "sad"),
    0: ("plain", "ordinary", "calm"),
    1: ("lovely", "joyful", "bright"),
}
QA_TYPES: tuple[str, ...] = ("color", "count", "direction", "forbidden")
ANSWERS: tuple[str, ...] = (*COLORS, "0", "1", "2", "3", "4", *ACTIONS, "yes", "no")

# Word-level vocabulary of transcripts, captions and questions; the tokenizer falls back to bytes.
_FILLER = (
    "a",
    "an",
    "the",
    "moves",
    "is",
    "and",
    "while",
    "figure",
    "waves",
    "scene",
    "feels",
    "what",
    "color",
    "how",
    "many",
    "objects",
    "are",
    "there",
    "which",
    "way",
    "does",
    "go",
    "any",
    "forbidden",
    "content",
    "here",
    "with",
    "background",
    "warm",
    "cool",
    "neutral",
    "says",
    "hey",
    "look",
    "at",
    "this",
    "in",
    "of",
    "shapes",
    "moving",
    "sign",
    "symbol",
    "no",
    "yes",
)
WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        _FILLER
        + OBJECT_CLASSES
        + COLORS
        + ACTIONS
        + (FORBIDDEN_WORD,)
        + tuple(w for ws in SENTIMENT_WORDS.values() for w in ws)
    )
)

# The synthetic world's twelve tasks as a preset of declared tasks (veilfed.tasks): a bare weight
# in [model.tasks] (``action = 1.0``) names one of these. Target keys are the world's own
# (docs/contracts.md) where they differ from the defaults.
SYNTHETIC_TASKS: dict[str, dict[str, object]] = {
    "action": {"kind": "classification", "classes": ACTIONS},
    "sentiment": {"kind": "classification", "classes": SENTIMENTS},
    "moderation": {"kind": "binary", "classes": ("flagged",)},
    "quality": {"kind": "regression"},
    "detection": {
        "kind": "detection",
        "classes": OBJECT_CLASSES,
        "targets": {"boxes": "boxes", "classes": "box_classes"},
        "slots": MAX_OBJECTS,
    },
    "segmentation": {"kind": "segmentation", "classes": OBJECT_CLASSES},
    "pose": {
        "kind": "keypoints",
        "classes": KEYPOINTS,
        "targets": {"points": "keypoints", "visible": "keypoint_visible"},
    },
    "caption": {"kind": "caption"},
    "qa": {
        "kind": "qa",
        "classes": ANSWERS,
        "targets": {"questions": "questions", "answers": "answers"},
        "question_types": len(QA_TYPES),
        "questions": len(QA_TYPES),
    },
    "summary": {"kind": "frame_scores", "targets": {"target": "keyframes"}},
    "restoration": {"kind": "restoration", "targets": {"target": "clean"}},
    "next_frame": {"kind": "next_frame", "targets": {"target": "next_frames"}},
}
TASKS: tuple[str, ...] = tuple(SYNTHETIC_TASKS)
