"""``veilfed train``: centralized training on the config's synthetic world (DP-SGD optional).

Per-task metrics go to MLflow (``eval/<task>/<metric>``, ``train/loss``, ``privacy/eps_max``) and
to a table on stdout; ``--summary-json`` writes the run summary (``veilfed simulate``'s keys).
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from veilfed.cli.common import emit_summary, handle_errors, progress

CLIENT_ID = "centralized"


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)


@handle_errors
def train_cmd(
    config: Path = typer.Option(..., "--config", help="Experiment TOML (experiments/*.toml)."),
    summary_json: Path | None = typer.Option(None, "--summary-json", help="Write the summary."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --summary-json."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Centralized training on the synthetic world; DP-SGD when [privacy] enabled."""
    from veilfed.config import load_config
    from veilfed.errors import UsageError
    from veilfed.io import check_new_output
    from veilfed.model.losses import dp_refusal
    from veilfed.privacy.targets import check_delta_for

    cfg = load_config(config)
    if cfg.privacy.enabled:  # n: the training set, every clip of the config's world
        check_delta_for(
            cfg.privacy.delta, cfg.world.clips, f"{config}: privacy", "the world.clips examples"
        )
        if why := dp_refusal(cfg.model.loss_weighting):
            raise UsageError(f"{config}: model.{why}")
    if summary_json is not None:
        check_new_output(summary_json, force, "--summary-json", (config,))
    summary = run(cfg)
    emit_summary(summary, summary_json, force, as_json, print_metrics)


def _loaders(cfg: Any) -> tuple[Any, Any]:
    from torch.utils.data import DataLoader

    from veilfed.augment import build_augmentations
    from veilfed.data.dataset import ClipDataset, MemorySource, collate
    from veilfed.train import CachedDataset, train_collate

    w = cfg.world
    train_world = w.world_config()
    eval_world = w.world_config(seed=w.seed + 1_000_003)  # disjoint clips, same distribution
    augment = build_augmentations(cfg.train.augmentations) if cfg.train.augmentations else None
    train_ds = CachedDataset(
        ClipDataset(MemorySource.world(train_world, w.clips), train_world), augment
    )
    eval_ds = CachedDataset(ClipDataset(MemorySource.world(eval_world, w.eval_clips), eval_world))
    train = DataLoader(
        train_ds, batch_size=cfg.train.batch_size, shuffle=True, collate_fn=train_collate
    )
    evals = DataLoader(eval_ds, batch_size=cfg.train.batch_size, collate_fn=collate)
    return train, evals


def run(cfg: Any) -> dict[str, Any]:
    """Train and evaluate ``cfg``; returns the run summary."""
    import torch

    from veilfed import tracking
    from veilfed.model import create_model, evaluate
    from veilfed.privacy.calibration import noise_for
    from veilfed.train import build_optimizer, make_private, train_steps

    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)
    start = time.perf_counter()
    with Console(stderr=True).status("synthesizing the world"):
        train_loader, eval_loader = _loaders(cfg)
    model = create_model(cfg)
    optimizer = build_optimizer(model.parameters(), t)
    steps_per_epoch = len(train_loader)
    total = t.steps or t.epochs * steps_per_epoch
    p = cfg.privacy
    privacy = None
    noise = 0.0
    if p.enabled:
        # Opacus' Poisson rate is one over the batches of an epoch; σ covers all `total` steps.
        rate = 1 / steps_per_epoch
        noise = noise_for(p.noise_multiplier, p.epsilon, p.delta, rate, total, p.accountant)
        model, optimizer, train_loader, privacy = make_private(
            model,
            optimizer,
            train_loader,
            noise,
            p.max_grad_norm,
            mode=p.mode,
            accountant_kind=p.accountant,
        )
    params = {
        "model": {k: v for k, v in vars(cfg.model).items()},
        "train": vars(t),
        "privacy": vars(p),
        "world": vars(cfg.world),
    }
    tracker = tracking.start_run(
        cfg.tracking.experiment or cfg.name, params=params, run_name=f"train-{cfg.name}"
    )
    with tracker.failing_on_error():
        with progress() as bar:
            task = bar.add_task("training", total=total)

            def on_step(step: int, loss: float) -> None:
                bar.update(task, completed=step, description=f"training loss {loss:.3f}")

            kwargs = {"steps": t.steps} if t.steps else {"epochs": t.epochs}
            stats = train_steps(
                model, train_loader, optimizer, privacy=privacy, on_step=on_step, **kwargs
            )
        with Console(stderr=True).status("evaluating"):
            metrics = evaluate(model, eval_loader)
        logged = {
            f"eval/{task}/{_mlflow_name(k)}": v for task, m in metrics.items() for k, v in m.items()
        }
        logged["train/loss"] = stats.loss
        logged |= {f"train/{task}/loss": v for task, v in stats.task_losses.items()}
        clients: dict[str, Any] = {}
        if privacy is not None:
            eps = privacy.epsilon(p.delta)
            logged |= {
                "privacy/eps_max": eps,
                "privacy/eps_mean": eps,
                f"privacy/client/{CLIENT_ID}/eps": eps,
            }
            clients[CLIENT_ID] = {
                "epsilon": eps,
                "delta": p.delta,
                "noise_multiplier": noise,
                "sample_rate": privacy.sample_rate,
                "steps": privacy.steps,
                "max_grad_norm": p.max_grad_norm,
                "accountant": p.accountant,
                "rounds": 1,
            }
        epochs_done = math.ceil(stats.steps / max(steps_per_epoch, 1))
        tracker.log_metrics(logged, step=epochs_done)
        summary = {
            "run_id": tracker.run_id,
            "tracking_uri": tracker.tracking_uri,
            "rounds": epochs_done,
            "steps": stats.steps,
            "wall_s": round(time.perf_counter() - start, 3),
            "metrics": metrics,
            "clients": clients,
            "he": {
                "enabled": False,
                "ciphertext_bytes": 0,
                "plaintext_bytes": 0,
                "max_abs_error": 0.0,
            },
        }
        tracker.log_json(summary, "summary.json")
        tracker.finish()
    return summary


def _mlflow_name(metric: str) -> str:
    """MLflow metric names allow no '@' (e.g. ``pck@0.1`` -> ``pck_at_0.1``)."""
    return metric.replace("@", "_at_")


def print_metrics(summary: dict[str, Any]) -> None:
    table = Table(title=f"per-task metrics (run {summary['run_id']})")
    table.add_column("task")
    table.add_column("metrics")
    for task, metrics in summary["metrics"].items():
        table.add_row(task, "  ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
    console = Console()
    console.print(table)
    for cid, c in summary["clients"].items():
        console.print(
            f"{cid}: ε={c['epsilon']:.3g} (δ={c['delta']:g}), σ={c['noise_multiplier']:.3g}, "
            f"{c['steps']} steps"
        )
    console.print(f"wall {summary['wall_s']:.1f}s, tracking {summary['tracking_uri']}")
