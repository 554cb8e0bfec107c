"""``veilfed evaluate MODEL --config CFG``: held-out metrics, clean or under an L∞ attack.

Without ``--attack`` a table of each task's primary metric beside its label-only baseline; with
``--attack pgd|fgsm --eps E`` also each attackable task's robust metric (the attack maximising
that task's loss, :mod:`veilfed.robust`) and its margin over the baseline. The evaluation is
logged as an MLflow run ``evaluate-<config name>``; ``--json`` prints the report
(docs/robustness.md).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from veilfed.cli.common import DEVICE_HELP, MODEL_HELP, console, handle_errors, print_json

_stdout = Console()


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_cmd)


@handle_errors
def evaluate_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    config: Path = typer.Option(
        ..., "--config", help="The experiment the model was trained with: its data and tasks."
    ),
    store: Path | None = typer.Option(None, "--store", help="Held-out clips of this store."),
    key_file: Path | None = typer.Option(None, "--key-file", help="Fernet key of --store."),
    tasks: list[str] = typer.Option(
        [], "--tasks", help="Only these tasks (repeatable; default: all, or all attackable)."
    ),
    attack: str | None = typer.Option(
        None, "--attack", help="pgd or fgsm: also score under this L-inf attack (needs --eps)."
    ),
    eps: float | None = typer.Option(
        None,
        "--eps",
        help="The attack's L-inf radius in input units (pixels in [0, 1], audio "
        "samples in [-1, 1]), e.g. 0.0157 for 4/255.",
    ),
    steps: int | None = typer.Option(
        None, "--steps", help="pgd: iterations (default 10, step 2.5*eps/steps); fgsm takes one."
    ),
    modality: str | None = typer.Option(
        None,
        "--modality",
        help="With --attack: video (default), audio or all (every attackable input it reads).",
    ),
    bootstrap: int = typer.Option(
        1000, "--bootstrap", min=0, help="Paired resamples of the clips for the 95 % intervals."
    ),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Score a trained model on held-out clips beside the baselines, clean or under attack;
    logged as an MLflow run."""
    from veilfed import tracking
    from veilfed.devices import resolve
    from veilfed.epochs import metric_name
    from veilfed.errors import UsageError
    from veilfed.inference.heldout import held_out, load_model
    from veilfed.robust import choose_tasks, plan_attack, robustness_report
    from veilfed.robust.attack import check_eps, check_method

    if attack is None and (eps is not None or steps is not None or modality is not None):
        raise UsageError(
            "--eps, --steps and --modality go with --attack pgd|fgsm; add --attack or drop them"
        )
    if attack is not None:
        check_method(attack, "--attack")
        if eps is None:
            raise UsageError(f"--attack {attack} needs --eps (the L-inf radius, e.g. 0.0157)")
        check_eps(eps, "--eps")
    cfg, net, _ = load_model(model, config)
    chosen = choose_tasks(net.task_specs, tasks, attack is not None)
    net.to(resolve(device))
    with console.status("reading the held-out clips"):
        clips = held_out(cfg, net, store, key_file)
    test, baselines = clips.test, clips.baselines
    planned = None
    if attack is not None and eps is not None:
        planned = plan_attack(attack, eps, steps, modality or "video", net.modalities, test)
    what = f"attacking ({attack}, eps {eps:g})" if planned is not None else "scoring"
    with console.status(f"{what} on the held-out clips"):
        report = robustness_report(
            net, test, baselines, chosen, planned, seed=cfg.train.seed, bootstrap=bootstrap
        )
    report["model"] = model
    params = {"model": model, "tasks": chosen, "attack": report["attack"] or "none"}
    tracker = tracking.start_run(
        cfg.tracking.experiment or cfg.name,
        params={"evaluate": params},
        run_name=f"evaluate-{cfg.name}",
        tags={"veilfed.kind": "evaluate"},
    )
    metrics = {}
    for task, row in report["tasks"].items():
        name = metric_name(row["metric"])
        for key in ("clean", "robust", "baseline"):
            if row.get(key) is not None:
                metrics[f"{key}/{task}/{name}"] = row[key]
    tracker.log_metrics(metrics, step=0)
    tracker.log_json(report, "evaluation.json")
    tracker.finish()
    report["run_id"] = tracker.run_id
    if as_json:
        print_json(report)
        return
    _show(report)


def _fmt(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.3f}" if sign else f"{value:.3f}"


def _margin(value: float | None, ci: list[float] | None) -> str:
    text = _fmt(value, sign=True)
    return text + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")


def _show(report: dict) -> None:
    a = report["attack"]
    if a is None:
        title = f"held-out clips ({report['clips']}; run {report['run_id']})"
        columns = ("task", "metric", "clean", "baseline", "margin (95 % CI)")
    else:
        title = (
            f"{a['method']} eps {a['eps']:g} on {', '.join(a['modalities'])}, {a['steps']} "
            f"step(s) of {a['step_size']:.4g} ({report['clips']} held-out clips; run "
            f"{report['run_id']})"
        )
        columns = ("task", "metric", "clean", "robust", "baseline", "robust margin (95 % CI)")
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for task, r in report["tasks"].items():
        if a is None:
            margin = _margin(r["margin_clean"], r["margin_clean_ci95"])
            table.add_row(task, r["metric"], _fmt(r["clean"]), _fmt(r["baseline"]), margin)
        else:
            margin = _margin(r["margin_robust"], r["margin_robust_ci95"])
            cells = (_fmt(r["clean"]), _fmt(r["robust"]), _fmt(r["baseline"]), margin)
            table.add_row(task, r["metric"], *cells)
    _stdout.print(table)
