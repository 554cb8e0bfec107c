"""Declared tasks: each task a name, a head kind, a label space, a loss weight and its target keys.

An experiment declares its tasks in ``[model.tasks]``; heads, metrics, baselines and the dataset's
target builders are registered per *kind* and take a :class:`TaskSpec`, so nothing in the model
core names a task::

    [model.tasks.scene]
    kind = "classification"          # one of KINDS
    classes = ["cartoon", "street"]  # the label space (required for the kinds in NEEDS_CLASSES)
    weight = 1.0                     # loss weight, >= 0
    # kind options, e.g. range = [1.0, 5.0] for a regression

A bare number (``action = 1.0``) or a table without ``kind`` names a task of the synthetic
world's preset (:data:`veilfed.data.schema.SYNTHETIC_TASKS`) with that weight or those overrides.

Invariants a :class:`TaskSpec` holds (checked by :func:`task_spec`, which names the config field
that breaks one):

* ``kind`` is a key of :data:`KINDS`; ``targets`` maps exactly that kind's fields to batch target
  keys (default: the first field is the task name, others ``"<name>.<field>"``);
* ``classes`` are distinct non-empty strings; a kind in :data:`NEEDS_CLASSES` has at least one
  (a classification at least two); a kind not in :data:`USES_CLASSES` has none;
* ``options`` holds every option of the kind (:data:`KIND_OPTIONS`, defaults filled) and no other;
* ``weight`` is finite and >= 0.

* ``name`` matches :data:`NAME` (it becomes a labels column, an MLflow metric prefix and a target
  key) and is none of :data:`RESERVED` (the labels files' own columns).

Two tasks may share a kind; their target keys must then differ (checked by :func:`task_specs`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from veilfed.data import schema
from veilfed.errors import UsageError

# kind -> the target fields a batch carries for it (docs/contracts.md, "Targets").
KINDS: dict[str, tuple[str, ...]] = {
    "classification": ("target",),  # int64 [B] class index
    "binary": ("target",),  # float32 [B] 0/1
    "multilabel": ("target",),  # float32 [B, C] 0/1 per class
    "regression": ("target",),  # float32 [B] in options.range
    "detection": ("boxes", "classes"),  # [B, T, N, 4] xyxy in [0, 1]; int64 [B, T, N], -1 none
    "segmentation": ("target",),  # int64 [B, T, H, W]: 0 background, c + 1 class c, -1 unknown
    "keypoints": ("points", "visible"),  # float32 [B, T, P, 2] (x, y) in [0, 1]; bool [B, T, P]
    "caption": ("target",),  # int64 [B, L] BOS .. EOS PAD
    "qa": ("questions", "answers"),  # int64 [B, Q, Lq]; int64 [B, Q] answer index, -1 none
    "frame_scores": ("target",),  # float32 [B, T] in [0, 1]; -1 unknown
    "restoration": ("target",),  # float32 [B, T, 3, H, W]: the clip before degradation
    "next_frame": ("target",),  # float32 [B, K, 3, H, W]: the K frames after the clip
}
UNKNOWN_BOX = -2  # detection target class of every slot of a frame nobody annotated
NEEDS_CLASSES = frozenset({"classification", "multilabel", "detection", "segmentation"})
NEEDS_CLASSES |= {"keypoints", "qa"}
USES_CLASSES = NEEDS_CLASSES | {"binary"}
# kind -> {option: default}. Self-supervised kinds' options say how targets are made from a clip.
KIND_OPTIONS: dict[str, dict[str, Any]] = {
    "regression": {"range": [0.0, 1.0]},
    "detection": {"slots": schema.MAX_OBJECTS},
    "caption": {"max_len": schema.MAX_CAPTION_TOKENS},
    "qa": {"question_types": 1, "questions": 4},
    "frame_scores": {"levels": 10},
    "restoration": {"degradations": ["blur", "noise", "compression", "sr2"], "p_degraded": 0.5},
    "next_frame": {"frames": schema.NEXT_FRAMES},
}
_TABLE_KEYS = ("kind", "classes", "weight", "targets")
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
RESERVED = frozenset({"file", "path", "clip_id", "transcript"})


@dataclass
class TaskSpec:
    """One declared task (see the module docstring for its invariants)."""

    name: str
    kind: str
    classes: tuple[str, ...] = ()
    weight: float = 1.0
    targets: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def key(self, name: str = "target") -> str:
        """The batch target key of this task's field ``name``."""
        return self.targets[name]

    @property
    def keys(self) -> tuple[str, ...]:
        """Every batch target key of this task, in the kind's field order."""
        return tuple(self.targets[f] for f in KINDS[self.kind])

    def index(self, label: Any, where: str) -> int:
        """A class name (or its index, as int or text) -> its index; one-line error otherwise.

        An index is accepted only when no class name is itself a number, so ``"1"`` can never mean
        both the class named ``"1"`` and the second class.
        """
        text = str(label).strip()
        if text in self.classes:
            return self.classes.index(text)
        numeric_names = any(c.isdecimal() for c in self.classes)
        if text.isdecimal() and not numeric_names and int(text) < len(self.classes):
            return int(text)
        shown = ", ".join(self.classes[:12]) + (", ..." if len(self.classes) > 12 else "")
        raise UsageError(
            f"{where}: {text[:40]!r} is not a class of task {self.name!r}; "
            f"declare it in [model.tasks.{self.name}] classes or use one of: {shown}"
        )


def _default_targets(name: str, kind: str) -> dict[str, str]:
    fields = KINDS[kind]
    return {f: name if i == 0 else f"{name}.{f}" for i, f in enumerate(fields)}


def task_spec(name: str, value: float | Mapping[str, Any], where: str = "") -> TaskSpec:
    """The :class:`TaskSpec` of ``[model.tasks] name = value`` (a weight or a table)."""
    where = where or f"model.tasks.{name}"
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UsageError(
            f"{where}: task name {name!r} must start with a letter and hold only letters, "
            "digits, '_' and '-' (at most 64)"
        )
    if name in RESERVED:
        raise UsageError(
            f"{where}: {name!r} is a labels column of its own ({', '.join(sorted(RESERVED))}); "
            "name the task otherwise"
        )
    table: dict[str, Any] = (
        {"weight": value}
        if isinstance(value, int | float) and not isinstance(value, bool)
        else dict(value)
        if isinstance(value, Mapping)
        else {}
    )
    if not isinstance(value, int | float | Mapping) or isinstance(value, bool):
        raise UsageError(f"{where}: expected a weight or a table with kind and classes")
    if "kind" not in table:
        preset = schema.SYNTHETIC_TASKS.get(name)
        if preset is None:
            raise UsageError(
                f"{where}: give kind ({', '.join(KINDS)}) and classes; {name!r} is not a task "
                f"of the synthetic preset ({', '.join(schema.SYNTHETIC_TASKS)})"
            )
        table = dict(preset) | table
    kind = table.pop("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise UsageError(f"{where}.kind: unknown kind {kind!r}; valid: {', '.join(KINDS)}")
    classes = table.pop("classes", ())
    if not isinstance(classes, list | tuple) or not all(isinstance(c, str) and c for c in classes):
        raise UsageError(f"{where}.classes: expected a list of non-empty class names")
    classes = tuple(classes)
    if len(set(classes)) != len(classes):
        dup = next(c for c in classes if classes.count(c) > 1)
        raise UsageError(f"{where}.classes: {dup!r} is listed twice")
    least = 2 if kind == "classification" else 1 if kind in NEEDS_CLASSES else 0
    if len(classes) < least:
        raise UsageError(f"{where}.classes: a {kind} task needs at least {least} classes")
    if classes and kind not in USES_CLASSES:
        raise UsageError(f"{where}.classes: a {kind} task has no classes; remove the field")
    weight = table.pop("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise UsageError(f"{where}.weight: expected a number, got {weight!r}")
    if not math.isfinite(weight) or weight < 0:
        raise UsageError(f"{where}.weight: must be a finite number >= 0, got {weight}")
    given = table.pop("targets", {})
    if not isinstance(given, Mapping) or not all(isinstance(v, str) and v for v in given.values()):
        raise UsageError(f'{where}.targets: expected a table of field = "batch key"')
    targets = _default_targets(name, kind) | dict(given)
    if set(targets) != set(KINDS[kind]):
        raise UsageError(f"{where}.targets: a {kind} task's fields are {', '.join(KINDS[kind])}")
    allowed = KIND_OPTIONS.get(kind, {})
    unknown = [k for k in table if k not in allowed]
    if unknown:
        valid = ", ".join((*_TABLE_KEYS, *allowed))
        raise UsageError(f"{where}: unknown field {unknown[0]!r} for a {kind} task; valid: {valid}")
    options = {k: table.get(k, v) for k, v in allowed.items()}
    _check_options(kind, options, where)
    return TaskSpec(name, kind, classes, float(weight), targets, options)


def _check_options(kind: str, options: dict[str, Any], where: str) -> None:
    for key, default in KIND_OPTIONS.get(kind, {}).items():
        value = options[key]
        if isinstance(default, int) and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise UsageError(f"{where}.{key}: expected a whole number >= 1, got {value!r}")
    if kind == "regression":
        lo_hi = options["range"]
        if (
            not isinstance(lo_hi, list | tuple)
            or len(lo_hi) != 2
            or not all(isinstance(v, int | float) for v in lo_hi)
            or not lo_hi[0] < lo_hi[1]
        ):
            raise UsageError(f"{where}.range: expected [low, high] with low < high, got {lo_hi!r}")
        options["range"] = [float(lo_hi[0]), float(lo_hi[1])]
    if kind == "restoration":
        from_kind = set(options["degradations"]) - set(DEGRADATIONS)
        if from_kind or not options["degradations"]:
            raise UsageError(f"{where}.degradations: choose from {', '.join(DEGRADATIONS)}")
        p = options["p_degraded"]
        if not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            raise UsageError(f"{where}.p_degraded: expected a probability in [0, 1], got {p!r}")


# What the restoration kind can make from a clean real clip at load time (veilfed.data.targets).
DEGRADATIONS = ("blur", "noise", "compression", "sr2")


def task_specs(tasks: Mapping[str, float | Mapping[str, Any]], where: str = "model.tasks"):
    """``{name: TaskSpec}`` of a ``[model.tasks]`` table, in its order; keys checked distinct."""
    if not isinstance(tasks, Mapping) or not tasks:
        raise UsageError(f"{where}: declare at least one task")
    specs = {name: task_spec(name, value, f"{where}.{name}") for name, value in tasks.items()}
    owner: dict[str, str] = {}
    for spec in specs.values():
        for key in spec.keys:
            if key in owner:
                raise UsageError(
                    f"{where}.{spec.name}.targets: key {key!r} is already task "
                    f"{owner[key]!r}'s; give this task its own"
                )
            owner[key] = spec.name
    return specs


def as_spec(task: str | TaskSpec) -> TaskSpec:
    """``task`` itself, or the synthetic preset's task of that name."""
    return task if isinstance(task, TaskSpec) else task_spec(task, 1.0)
