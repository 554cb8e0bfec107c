"""``veilfed tune``: :func:`veilfed.tuning.tune` with one line per trial and the best config
written as TOML (``--out``, default ``tuned-<config>.toml``; never replacing a file without
``--force``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from veilfed.cli.common import handle_errors, print_json
from veilfed.federation.rundir import RUNS_DIR


def register(app: typer.Typer) -> None:
    app.command("tune")(tune_cmd)


@handle_errors
def tune_cmd(
    config: Path = typer.Option(..., "--config", help="Experiment TOML (experiments/*.toml)."),
    trials: int = typer.Option(..., "--trials", help="Optuna trials (each a full training)."),
    out: Path | None = typer.Option(
        None, "--out", help="Write the best config here (TOML); default tuned-<config>.toml."
    ),
    seed: int = typer.Option(0, "--seed", help="TPE sampler seed."),
    timeout_s: float | None = typer.Option(None, "--timeout", help="Stop after this many s."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
    as_json: bool = typer.Option(False, "--json", help="Print the study as JSON."),
    federated: bool = typer.Option(
        False,
        "--federated",
        help="Each trial a federated simulation of the config's federated section on the public "
        "world (tunes local epochs instead of epochs; not pruned).",
    ),
    runs_dir: Path = typer.Option(
        Path(RUNS_DIR), "--runs-dir", help="Where --federated trials keep their run state."
    ),
) -> None:
    """Tune learning rate, batch size, epochs (local epochs with --federated), clipping norm,
    fusion and loss weighting on the public synthetic world (never on clients' data: that would
    spend their privacy)."""
    import tomli_w

    from veilfed.config import load_config
    from veilfed.io import check_new_output, write_text_atomic
    from veilfed.tuning import Trial, toml_table, tune

    cfg = load_config(config)
    out = out or Path(f"tuned-{config.stem}.toml")
    check_new_output(out, force, "--out", (config,))
    console = Console(stderr=True)

    def on_trial(t: Trial) -> None:
        value = "" if t.value is None else f"{t.value:.4g}"
        console.print(f"trial {t.number}: {t.state} {value} {t.params}")

    runner = None
    if federated:
        from veilfed.launch.trial import federated_trial

        runner = federated_trial(runs_dir)
    result = tune(
        cfg,
        trials,
        source=str(config),
        seed=seed,
        timeout_s=timeout_s,
        on_trial=on_trial,
        runner=runner,
        federated=federated,
    )
    text = f"# tuned by `veilfed tune` (MLflow run {result.run_id})\n"
    text += tomli_w.dumps(toml_table(result.best_table))
    write_text_atomic(out, text, overwrite=force, flag="--out")
    report: dict[str, Any] = {
        "run_id": result.run_id,
        "metric": result.metric,
        "direction": result.direction,
        "best_value": result.best_value,
        "best_params": result.best_params,
        "out": str(out),
        "trials": [vars(t) for t in result.trials],
    }
    if as_json:
        print_json(report)
        return
    Console().print(
        f"best {result.metric} = {result.best_value:.4g} ({result.direction}) with "
        f"{result.best_params}; config written to {out} (MLflow run {result.run_id})"
    )
