"""What an explanation explains: one scalar of one task's output on one clip.

* ``classification``: the log-probability of a class (default: the predicted one);
* ``binary``: the logit (default class: the task's one class);
* ``multilabel``: the logit of a class (default: the highest);
* ``regression``: the predicted value.

:func:`pick` resolves the task and class against the model (one line naming the task or class
and the valid ones otherwise); :meth:`Target.of` reads that scalar from a batch of outputs, and
:meth:`Target.confidence` the number people read (probability, or the value for a regression),
which modality ablation compares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from veilfed.errors import UsageError

EXPLAINABLE = ("classification", "binary", "multilabel", "regression")


@dataclass(frozen=True)
class Target:
    task: str
    kind: str
    index: int  # class index (0 for binary and regression)
    label: str  # class name, or the task name for a regression

    def of(self, outputs: dict[str, Any]) -> Tensor:
        """[B]: the explained scalar of each sample (module docstring)."""
        out = outputs[self.task]
        if self.kind == "classification":
            return torch.log_softmax(out, dim=-1)[:, self.index]
        if self.kind == "multilabel":
            return out[:, self.index]
        return out  # binary logit [B], regression value [B]

    def confidence(self, outputs: dict[str, Any]) -> Tensor:
        """[B]: probability of the class, or the regression's value."""
        value = self.of(outputs)
        if self.kind == "classification":
            return value.exp()
        if self.kind in ("binary", "multilabel"):
            return value.sigmoid()
        return value


def pick(model: Any, task: str, label: str | None, outputs: dict[str, Any]) -> Target:
    """The target of ``task`` on the clip whose ``outputs`` (batch of one) are given: class
    ``label``, or the default of the kind (module docstring)."""
    specs = model.task_specs
    if task not in specs:
        raise UsageError(f"--task {task!r}: the model has no such task; it has {', '.join(specs)}")
    spec = specs[task]
    if spec.kind not in EXPLAINABLE:
        ok = ", ".join(t for t, s in specs.items() if s.kind in EXPLAINABLE)
        raise UsageError(
            f"--task {task!r} is a {spec.kind} task; explain covers tasks of kind "
            f"{', '.join(EXPLAINABLE)} (this model: {ok or 'none'})"
        )
    if spec.kind == "regression":
        if label is not None:
            raise UsageError(f"--class: {task!r} is a regression, it has no classes")
        return Target(task, spec.kind, 0, task)
    classes = list(spec.classes)
    if label is not None:
        if label not in classes:
            raise UsageError(f"--class {label!r}: {task!r} has the classes {', '.join(classes)}")
        return Target(task, spec.kind, classes.index(label), label)
    if spec.kind == "binary":
        return Target(task, spec.kind, 0, classes[0])
    index = int(outputs[task][0].argmax())
    return Target(task, spec.kind, index, classes[index])
