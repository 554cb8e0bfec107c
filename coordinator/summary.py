"""The end of a run: its summary, per-task table and ε plot, and the run marked FINISHED.

:func:`finish` runs once per run, in the ServerApp after its last round, whichever way the run
was started: it logs the final and the best model (``best.log_models``; none under HE),
``summary.json``, ``metrics/per_task.md`` and ``plots/epsilon_vs_round.png``
to MLflow, writes ``summary.json`` into the run directory (where ``veilfed simulate`` reads it
back: :func:`load_summary`) and marks the MLflow run FINISHED. Everything here is data or files;
the console report is ``veilfed.cli.report``'s.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from veilfed.coordinator import checkpoint
from veilfed.coordinator.best import log_models
from veilfed.coordinator.evaluation import MARGIN_CI, SPREAD_PREFIX, VALUE_CI
from veilfed.errors import CheckFailed, UsageError
from veilfed.federation.keys import BASELINE_PREFIX, EVAL_PREFIX
from veilfed.federation.settings import RunSettings
from veilfed.federation.weights import experiment
from veilfed.io import write_text_atomic
from veilfed.metrics.scores import margins, primaries
from veilfed.tasks import TaskSpec

SUMMARY_FILE = "summary.json"  # in the run directory and among the MLflow artifacts


def summary_of(settings: Any, ckpt: Any, wall_s: float) -> dict[str, Any]:
    """The run's summary (``summary.json``; its keys are in docs/contracts.md)."""
    last = ckpt.history[-1] if ckpt.history else {"metrics": {}}
    scores = scores_of(last["metrics"], experiment(settings).model.task_specs())
    clients = {}
    for cid, c in sorted(ckpt.clients.items()):
        clients[cid] = {
            "epsilon": c["epsilon"],
            "delta": c["delta"],
            "noise_multiplier": c["noise_multiplier"],
            "sample_rate": c["sample_rate"],
            "steps": c["steps"],
            "max_grad_norm": c["max_grad_norm"],
            "accountant": c["accountant"],
            "rounds": c["rounds"],
        }
    return {
        "run_id": settings.run_id,
        "tracking_uri": settings.tracking_uri,
        "rounds": ckpt.round,
        "wall_s": round(wall_s, 3),
        **scores,
        "clients": clients,
        "he": he_summary(settings, ckpt.history),
        "comm": comm_summary(settings, ckpt.history),
        "strategy": settings.federated.strategy,
        "private": settings.privacy.enabled,
        "exhausted": dict(ckpt.exhausted),
        "round_wall_s": [h["metrics"]["round/wall_s"] for h in ckpt.history],
        "run_dir": settings.run_dir,
    }


def scores_of(
    metrics: dict[str, float], specs: dict[str, TaskSpec] | None = None
) -> dict[str, Any]:
    """The summary's ``metrics``, ``baselines``, ``margins``, ``primary`` and ``clients_spread``
    from one round's logged metrics (:func:`veilfed.coordinator.evaluation.round_scores`).

    ``ci95`` and ``margin_ci95`` of a margin are the bootstrap over the round's clients, given
    for each task's primary metric; other metrics' are null (the per-round logs stay small), as
    are all of them when one client evaluated (no spread to resample).
    """
    values: dict[str, dict[str, dict[str, float]]] = {EVAL_PREFIX: {}, BASELINE_PREFIX: {}}
    intervals: dict[str, dict[str, dict[str, list[float]]]] = {}
    spread: dict[str, dict[str, dict[str, float]]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if parts[0] in values and len(parts) == 3:
            values[parts[0]].setdefault(parts[1], {})[parts[2]] = value
        elif parts[0] in (VALUE_CI, MARGIN_CI) and len(parts) == 4:
            name = "ci95" if parts[0] == VALUE_CI else "margin_ci95"
            ci = intervals.setdefault(parts[1], {}).setdefault(parts[2], {})
            ci.setdefault(name, [math.nan, math.nan])[parts[3] == "hi"] = value
        elif parts[0] == SPREAD_PREFIX and len(parts) == 4:
            spread.setdefault(parts[1], {}).setdefault(parts[2], {})[parts[3]] = value
    return {
        "metrics": values[EVAL_PREFIX],
        "baselines": values[BASELINE_PREFIX],
        "margins": margins(values[EVAL_PREFIX], values[BASELINE_PREFIX], intervals, specs),
        "primary": primaries(specs.values() if specs else values[EVAL_PREFIX]),
        "clients_spread": spread,
    }


def he_summary(settings: Any, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary's ``he`` block: bytes of one client's message (last aggregated round) and the
    largest shadow error over the run (``null`` when not measured: [he] shadow is off)."""
    he_rounds = [h["metrics"] for h in history if "he/ciphertext_bytes" in h["metrics"]]
    errors = [
        h["metrics"]["he/max_abs_error"] for h in history if "he/max_abs_error" in h["metrics"]
    ]
    last = he_rounds[-1] if he_rounds else {}
    return {
        "enabled": bool(settings.he.enabled),
        "ciphertext_bytes": int(last.get("he/ciphertext_bytes", 0)),
        "plaintext_bytes": int(last.get("he/plaintext_bytes", 0)),
        "max_abs_error": max(errors) if errors else (None if settings.he.enabled else 0.0),
    }


def comm_summary(settings: Any, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary's ``comm`` block: the update compression and the plaintext bytes one client
    sent per round, averaged over the run's rounds (``null`` under HE: see the ``he`` block)."""
    rounds = [h["metrics"] for h in history if "comm/update_bytes" in h["metrics"]]
    mean = (lambda key: sum(r[key] for r in rounds) / len(rounds)) if rounds else None
    return {
        "update_compression": settings.federated.update_compression,
        "update_bytes": mean("comm/update_bytes") if mean else None,
        "dense_bytes": mean("comm/dense_bytes") if mean else None,
        "ratio": mean("comm/ratio") if mean else None,
    }


def finish(settings: RunSettings, tracker: Any, wall_s: float) -> dict[str, Any]:
    """Artifacts (summary, per-task table, ε plot), ``<run>/summary.json``, run FINISHED."""
    ckpt = checkpoint.load(settings.run_dir)
    if ckpt is None:
        raise UsageError(f"run {settings.run_id}: no finished round to summarize")
    summary = summary_of(settings, ckpt, wall_s)
    summary["model"] = log_models(settings, ckpt, tracker)
    tracker.log_json(summary, SUMMARY_FILE)
    tracker.log_text(metrics_table(ckpt.history), "metrics/per_task.md")
    figure = epsilon_plot(ckpt.history)
    if figure is not None:
        tracker.log_figure(figure, "plots/epsilon_vs_round.png")
    text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
    write_text_atomic(Path(settings.run_dir) / SUMMARY_FILE, text)
    tracker.finish("FINISHED")
    return summary


def load_summary(run_dir: str | Path) -> dict[str, Any]:
    """The summary :func:`finish` wrote into ``run_dir``."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        raise CheckFailed(f"{path}: the run ended without a summary; see the ServerApp log")
    return json.loads(path.read_text(encoding="utf-8"))


def per_task(history: list[dict[str, Any]]) -> tuple[list[str], list[tuple[int, list[Any]]]]:
    """The per-task metrics of every round as data: the ``<task>/<metric>`` columns, then one
    (round, values) row per round (None where a round has no value)."""
    keys = sorted({k for h in history for k in h["metrics"] if k.startswith("eval/")})
    rows = [(h["round"], [h["metrics"].get(k) for k in keys]) for h in history]
    return [k.removeprefix("eval/") for k in keys], rows


def metrics_table(history: list[dict[str, Any]]) -> str:
    """The ``metrics/per_task.md`` artifact: :func:`per_task` as a Markdown table."""
    columns, rows = per_task(history)
    lines = ["| round | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for rnd, values in rows:
        cells = [f"{v:.4f}" if v is not None else "" for v in values]
        lines.append(f"| {rnd} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def epsilon_plot(history: list[dict[str, Any]]) -> Figure | None:
    """Cumulative ε (max and mean over clients) by round; None for a run without client DP."""
    rounds = [h["round"] for h in history if "privacy/eps_max" in h["metrics"]]
    if not rounds:
        return None
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    for key, label in (("privacy/eps_max", "max over clients"), ("privacy/eps_mean", "mean")):
        ax.plot(
            rounds,
            [h["metrics"][key] for h in history if key in h["metrics"]],
            marker="o",
            label=label,
        )
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative ε")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig
