"""``veilfed train``: :func:`veilfed.centralized.run` with a progress bar and a per-task table;
``--summary-json`` writes the run summary (``veilfed simulate``'s keys)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from veilfed.cli.common import DEVICE_HELP, emit_summary, handle_errors, progress
from veilfed.cli.report import SCORE_COLUMNS, print_models, score_rows


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)


@handle_errors
def train_cmd(
    config: Path = typer.Option(..., "--config", help="Experiment TOML (experiments/*.toml)."),
    summary_json: Path | None = typer.Option(None, "--summary-json", help="Write the summary."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --summary-json."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    init_from: str | None = typer.Option(
        None,
        "--init-from",
        help="Start from these weights: a veilfed state dict (.pt) or torchvision's "
        "r2plus1d_18 state dict.",
    ),
    store: Path | None = typer.Option(
        None,
        "--store",
        help="Train on this encrypted store's clips (default: the config's synthetic world); "
        "[federated] holdout of them is the test set, as much again of the rest validation.",
    ),
    key_file: Path | None = typer.Option(None, "--key-file", help="Fernet key of --store."),
    register: str | None = typer.Option(
        None,
        "--register",
        help="Register the best model in MLflow's registry under this name (champion / "
        "challenger by the held-out selection metric).",
    ),
    device: str | None = typer.Option(
        None, "--device", help=DEVICE_HELP + " Default: the config's [train] device."
    ),
) -> None:
    """Centralized training on the synthetic world or an encrypted store; DP-SGD when [privacy]
    enabled."""
    from veilfed.config import load_config
    from veilfed.data.splits import split_store
    from veilfed.devices import resolve
    from veilfed.errors import UsageError
    from veilfed.io import check_new_output
    from veilfed.model.init import is_saved_model, local_source
    from veilfed.model.losses import dp_refusal
    from veilfed.privacy.targets import check_delta_for

    if device is not None:
        resolve(device)  # one line naming --device before the config is read
    cfg = load_config(config, {"train": {"device": device}} if device is not None else None)
    resolve(cfg.train.device, f"{config}: train.device")
    if (store is None) != (key_file is None):
        raise UsageError("--store and --key-file go together: give both or neither")
    split = None
    if store is not None and key_file is not None:
        split = split_store(store, key_file, cfg.federated.holdout, cfg.train.seed)
    if cfg.privacy.enabled:  # n: the training set
        n, what = (
            (cfg.world.clips, "the world.clips examples")
            if split is None
            else (len(split.train), f"the {len(split.train)} training clips of {store}")
        )
        check_delta_for(cfg.privacy.delta, n, f"{config}: privacy", what)
        if why := dp_refusal(cfg.model.loss_weighting):
            raise UsageError(f"{config}: model.{why}")
    if init_from is not None and not is_saved_model(init_from):
        local_source(init_from)  # a bad file is one line before anything trains
    if summary_json is not None:
        check_new_output(summary_json, force, "--summary-json", (config,))
    # Imported once the inputs are checked: MLflow and the training stack take seconds to load,
    # which a one-line refusal should not wait for.
    from veilfed.centralized import run

    with progress() as bar:
        task = bar.add_task("training", total=None)

        def on_step(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, description=f"training loss {loss:.3f}")

        def phase(name: str) -> Any:
            return Console(stderr=True).status(name)

        summary = run(cfg, on_step=on_step, phase=phase, init=init_from, store=split)
    if register:
        from veilfed.model.registered import register as register_model

        summary["registry"] = register_model(summary, register, cfg.model.task_specs())
    emit_summary(summary, summary_json, force, as_json, print_metrics)


def print_metrics(summary: dict[str, Any]) -> None:
    """Per task: primary metric, value, label-only baseline, margin and its 95 % interval (over
    the held-out clips), then every metric; then ε per client and where the run is tracked."""
    table = Table(
        title=f"per-task metrics vs label-only baselines (run {summary['run_id']})",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        collapse_padding=True,
        pad_edge=False,
    )
    for column in SCORE_COLUMNS:
        table.add_column(column, no_wrap=True)
    for row in score_rows(summary):
        table.add_row(*row)
    console = Console()
    console.print(table)
    table = Table(title="all metrics (held-out clips)")
    table.add_column("task")
    table.add_column("metrics")
    for task, metrics in summary["metrics"].items():
        table.add_row(task, "  ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
    console.print(table)
    for cid, c in summary["clients"].items():
        console.print(
            f"{cid}: ε={c['epsilon']:.3g} (δ={c['delta']:g}), σ={c['noise_multiplier']:.3g}, "
            f"{c['steps']} steps"
        )
    console.print(f"wall {summary['wall_s']:.1f}s, tracking {summary['tracking_uri']}")
    print_models(summary.get("model") or {}, "epoch", summary.get("registry"))
