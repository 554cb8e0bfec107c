"""A trained model's held-out metrics, clean and under an L∞ attack, beside the baselines.

:func:`plan_attack` turns ``veilfed evaluate``'s choices into an :class:`Attack`, refusing with
one line naming the flag: an unknown method, an eps that is not > 0 and finite, a step count
below 1 (or any for fgsm, which takes one step of eps), a modality the model has no encoder for,
or one no held-out clip carries (``modality_mask`` False everywhere: the attack would change
inputs the model never reads and report robustness it did not measure). ``all`` attacks every
attackable modality the model encodes and some clip carries.

:func:`robustness_report` scores the model on the held-out loader once clean and, per attacked
task, once on :class:`veilfed.robust.loader.Attacked` batches that maximise that task's own
loss, each pass with ``veilfed.model.score`` (same clips, same label-only baselines fitted on
the training clips, paired bootstrap intervals seeded alike). A row per task: its primary
metric clean and robust, the baseline, and both margins over the baseline with 95 % intervals.
Only attackable kinds (``ATTACKABLE_KINDS``) are attacked; without an attack every chosen task
gets its clean row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from veilfed.data import schema
from veilfed.errors import UsageError
from veilfed.metrics.intervals import DEFAULT_RESAMPLES
from veilfed.model import score
from veilfed.robust.attack import (
    ATTACKABLE_KINDS,
    DEFAULT_STEPS,
    Attack,
    attack_modalities,
    attackable,
    check_eps,
    check_method,
)
from veilfed.robust.loader import Attacked


def choose_tasks(specs: Mapping[str, Any], requested: Sequence[str], attacking: bool) -> list[str]:
    """The tasks to report: ``requested`` (checked against the model's ``specs``) or, by default,
    every task (every attackable one when ``attacking``)."""
    unknown = [t for t in requested if t not in specs]
    if unknown:
        raise UsageError(
            f"--tasks {unknown[0]}: the model has no such task; its tasks: {', '.join(specs)}"
        )
    if not attacking:
        return list(dict.fromkeys(requested)) or list(specs)
    kinds = ", ".join(ATTACKABLE_KINDS)
    for task in requested:
        if specs[task].kind not in ATTACKABLE_KINDS:
            raise UsageError(
                f"--tasks {task}: a {specs[task].kind} task is not attacked (attackable kinds: "
                f"{kinds}); drop it or drop --attack"
            )
    chosen = list(dict.fromkeys(requested)) or attackable(specs)
    if not chosen:
        raise UsageError(f"--attack: the model has no task of an attackable kind ({kinds})")
    return chosen


def carried(loader: Iterable[dict[str, Any]], modalities: Sequence[str]) -> set[str]:
    """The ``modalities`` that at least one clip of ``loader`` carries (its ``modality_mask``)."""
    found: set[str] = set()
    for batch in loader:
        mask = batch["modality_mask"]
        found |= {m for m in modalities if bool(mask[:, schema.MODALITIES.index(m)].any())}
        if found == set(modalities):
            break
    return found


def plan_attack(
    method: str,
    eps: float,
    steps: int | None,
    modality: str,
    encoded: Sequence[str],
    held_out: Iterable[dict[str, Any]],
) -> Attack:
    """The :class:`Attack` of ``veilfed evaluate``'s flags (module docstring)."""
    check_method(method, "--attack")
    check_eps(eps, "--eps")
    if method == "fgsm" and steps is not None:
        raise UsageError("--steps is pgd's: fgsm takes one step of size --eps; drop --steps")
    if steps is not None and steps < 1:
        raise UsageError(f"--steps {steps}: give at least 1")
    chosen = attack_modalities(modality, encoded, "--modality")
    present = carried(held_out, chosen)
    if not present:
        what = " or ".join(chosen)
        raise UsageError(
            f"--modality {modality}: no held-out clip carries {what} (modality_mask is False "
            "for every clip); attack a modality the clips have"
        )
    kept = tuple(m for m in chosen if m in present)
    return Attack(eps, method, steps or DEFAULT_STEPS, kept)


def _row(scores: Any, task: str, kind: str) -> dict[str, Any]:
    metric = scores.primary[task]
    m = scores.margins.get(task, {}).get(metric)
    return {
        "kind": kind,
        "metric": metric,
        "clean": scores.metrics[task].get(metric),
        "baseline": m["baseline"] if m else None,
        "margin_clean": m["margin"] if m else None,
        "margin_clean_ci95": m["margin_ci95"] if m else None,
    }


def robustness_report(
    model: Any,
    held_out: Iterable[dict[str, Any]],
    baselines: Mapping[str, Any],
    tasks: Sequence[str],
    attack: Attack | None,
    *,
    seed: int = 0,
    bootstrap: int = DEFAULT_RESAMPLES,
) -> dict[str, Any]:
    """``{"attack", "seed", "bootstrap", "clips", "tasks": {task: row}}`` (module docstring;
    the schema is in docs/robustness.md)."""
    specs = model.task_specs
    clean = score(model, held_out, baselines, bootstrap=bootstrap, seed=seed)
    rows = {t: _row(clean, t, specs[t].kind) for t in tasks}
    for task in tasks if attack is not None else ():
        attacked = Attacked(model, held_out, attack, [task], seed=seed)
        robust = score(model, attacked, baselines, bootstrap=bootstrap, seed=seed)
        metric = rows[task]["metric"]
        m = robust.margins.get(task, {}).get(metric)
        value = robust.metrics[task].get(metric)
        clean_value = rows[task]["clean"]
        rows[task] |= {
            "robust": value,
            "drop": None if value is None or clean_value is None else clean_value - value,
            "margin_robust": m["margin"] if m else None,
            "margin_robust_ci95": m["margin_ci95"] if m else None,
        }
    clips = sum(int(b["modality_mask"].shape[0]) for b in held_out)
    described = attack.describe() if attack is not None else None
    return {
        "attack": described,
        "seed": seed,
        "bootstrap": bootstrap,
        "clips": clips,
        "tasks": rows,
    }
