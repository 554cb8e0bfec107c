"""A trained model distilled into a narrower one, measured against it and its baseline.

:func:`distill_model` builds the student from the teacher's experiment with a smaller model width
(``[model] dim`` and, in proportion, ``pixel_dim``; everything else, tasks and encoders
included, as the teacher's) and trains it on the experiment's training clips for ``epochs``
passes with the experiment's ``[train]`` optimizer and lr. Its loss is its own task loss on the
labels plus the mean squared difference of every output from the teacher's on the same batch
(``veilfed.compress.match_outputs``: logit matching). Then, side by side in one process:

* held-out metrics of teacher and student on the same clips, each beside the label-only
  baselines fitted on the training clips (``veilfed.model.score``);
* parameters and state-dict bytes of each;
* per-window latency (batch 1, p50) of each, eager, calls taking turns.

The student is a plain veilfed model (its config is the teacher's with the new widths), so it is
saved, logged, registered and predicted with like any trained model. Distillation reads the
training clips in the clear and without DP: run it where those clips may be used that way (the
synthetic world, public data, or a data owner on their own clips).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from veilfed.compress import Distill, match_outputs
from veilfed.errors import UsageError
from veilfed.inference.export import Exported
from veilfed.inference.heldout import Clips
from veilfed.inference.measure import p50_ms, state_bytes, task_rows
from veilfed.model import create_model, score
from veilfed.train import build_optimizer


def student_config(cfg: Any, dim: int) -> Any:
    """``cfg`` with ``[model] dim = dim`` and ``pixel_dim`` scaled alike; refused when the
    student would not be narrower or cannot be built that narrow."""
    m = cfg.model
    if not 4 <= dim < m.dim:
        raise UsageError(f"--student-dim {dim}: give a width in [4, {m.dim}) (the model's dim)")
    pixel = max(4, round(m.pixel_dim * dim / m.dim))
    student = dataclasses.replace(cfg, model=dataclasses.replace(m, dim=dim, pixel_dim=pixel))
    try:
        create_model(student)
    except (ValueError, RuntimeError, AssertionError, UsageError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UsageError(
            f"--student-dim {dim}: the model cannot be built that narrow ({reason})"
        ) from None
    return student


def _loss(student: Any) -> Any:
    def loss(student_out: Any, teacher_out: Any, batch: Any) -> torch.Tensor:
        task_loss, _ = student.loss(student_out, batch)
        return task_loss + match_outputs(student_out, teacher_out)

    return loss


def finetune(teacher: Any, student: Any, cfg: Any, train: Any, epochs: int) -> None:
    """Train ``student`` in place on the ``train`` loader for ``epochs`` passes to match
    ``teacher`` (the loss above), with the experiment's ``[train]`` optimizer and lr."""
    teacher.eval()
    method = Distill(
        lambda: student,
        train,
        _loss(student),
        epochs=epochs,
        optimizer=lambda params: build_optimizer(params, cfg.train),
    )
    method.compress(teacher)


def compare(
    teacher: Any, student: Any, cfg: Any, test: Any, baselines: Any, reps: int = 30
) -> dict[str, Any]:
    """The side-by-side part of a report (module docstring): ``params``, ``bytes``,
    ``latency_p50_ms`` and ``speedup_student_vs_teacher``, ``tasks``."""
    seed = cfg.train.seed
    before = score(teacher, test, baselines, bootstrap=200, seed=seed)
    after = score(student, test, baselines, bootstrap=200, seed=seed)
    world = cfg.world.world_config()
    big, small = Exported(teacher, world), Exported(student, world)
    example = big.example(batch=1)
    with torch.no_grad():
        latency = p50_ms({"teacher": big, "student": small}, example, reps)
    return {
        "params": {
            "teacher": sum(p.numel() for p in teacher.parameters()),
            "student": sum(p.numel() for p in student.parameters()),
        },
        "bytes": {"teacher": state_bytes(teacher), "student": state_bytes(student)},
        "latency_p50_ms": {k: round(v, 3) for k, v in latency.items()},
        "speedup_student_vs_teacher": round(latency["teacher"] / latency["student"], 2),
        "tasks": task_rows(before, after),
    }


def distill_model(
    teacher: Any, cfg: Any, dim: int, clips: Clips, epochs: int, reps: int = 30
) -> tuple[Any, Any, dict[str, Any]]:
    """(student, its experiment config, report) (module docstring)."""
    student_cfg = student_config(cfg, dim)
    torch.manual_seed(cfg.train.seed)
    student = create_model(student_cfg)
    finetune(teacher, student, cfg, clips.train, epochs)
    report = {
        "method": "distill",
        "dim": {"teacher": cfg.model.dim, "student": dim},
        "epochs": epochs,
        **compare(teacher, student, cfg, clips.test, clips.baselines, reps),
    }
    return student, student_cfg, report
