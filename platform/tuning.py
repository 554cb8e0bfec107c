"""Hyperparameter search on public data: Optuna TPE with median pruning, one MLflow child run per
trial, the best config written out as TOML.

Contract:

- **Public data only.** Every trial trains on the config's synthetic world (``[world]``), which is
  public: it spends no one's privacy. Tuning on clients' private data would spend privacy with
  every trial (each trial is a full training run, and the *choice* of the best trial is itself a
  release), so veilfed refuses it rather than accounting for it: nothing here takes a store, a
  bundle or a node. A DP config is tuned under DP on the public world, so the noise, clipping
  norm and sampling rate it picks are the ones the private run will use.
- **Objective.** ``[train] select_metric`` on the validation clips (a world seed that neither
  training nor the held-out test clips use), at the trial's best epoch; "loss" is minimised,
  a ``task/metric`` follows its metric's direction (:func:`veilfed.metrics.higher_is_better`).
- **Pruning.** Each epoch's validation value is reported to Optuna; a trial below the median of
  earlier trials at the same epoch (after ``WARMUP_EPOCHS``) stops early and is marked pruned.
- **Search space** (:data:`SPACE`): learning rate, batch size, epochs (``local_epochs`` when the
  trials are federated), clipping norm (DP configs only), fusion and loss weighting.
- **Trials.** Each trial is a centralized run (:func:`veilfed.centralized.run`) by default; a
  ``runner`` with the same signature replaces it, e.g. a federated simulation of the public world
  (:func:`veilfed.launch.trial.federated_trial`, ``veilfed tune --federated``), which reports
  only its final value and so is never pruned.
- **Tracking.** The study is one MLflow run (``tune-<name>``); each trial is a child run of it
  (tag ``mlflow.parentRunId``) holding the trial's own params and metrics. The parent logs
  ``tune/best_value`` and the best trial's params.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna

from veilfed import centralized, selection, tracking
from veilfed.config import ExperimentConfig, parse_config
from veilfed.errors import UsageError
from veilfed.model.losses import dp_refusal
from veilfed.model.registry import FUSIONS

WARMUP_EPOCHS = 2
BATCH_SIZES = (4, 8, 16, 32)
LOSS_WEIGHTINGS = ("fixed", "uncertainty", "dwa")
MAX_LOCAL_EPOCHS = 3


@dataclass
class Trial:
    number: int
    state: str  # "complete" | "pruned" | "failed"
    value: float | None
    params: dict[str, Any]
    run_id: str | None = None


@dataclass
class TuneResult:
    """The study: best value and params, the tuned config as a table, every trial."""

    metric: str
    direction: str
    best_value: float
    best_params: dict[str, Any]
    best_table: dict[str, Any]
    run_id: str
    trials: list[Trial] = field(default_factory=list)


def fusions(cfg: ExperimentConfig) -> list[str]:
    """The fusions the config's encoders allow (a fusion may need a modality's encoder)."""
    used = {m for m, name in cfg.model.encoders.items() if name}
    return [f for f in FUSIONS.names() if all(r in used for r in FUSIONS.get(f).requires)]


def suggest(
    trial: optuna.Trial, cfg: ExperimentConfig, federated: bool = False
) -> dict[str, dict[str, Any]]:
    """One point of :data:`SPACE` as config overrides ``{section: {field: value}}``.

    lr log-uniform in [1e-4, 3e-2]; batch size in :data:`BATCH_SIZES` (at most the world's
    clips); epochs in [1, 2x the config's] (``federated`` trials tune ``[federated]
    local_epochs`` in [1, :data:`MAX_LOCAL_EPOCHS`] instead); DP configs: ``max_grad_norm``
    log-uniform in [0.1, 10]; fusion among :func:`fusions`; loss weighting among
    :data:`LOSS_WEIGHTINGS` (dwa not under DP).
    """
    sizes = [b for b in BATCH_SIZES if b <= cfg.world.clips] or [cfg.world.clips]
    train: dict[str, Any] = {
        "lr": trial.suggest_float("lr", 1e-4, 3e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", sizes),
    }
    if not cfg.train.steps and not federated:
        train["epochs"] = trial.suggest_int("epochs", 1, max(2, 2 * cfg.train.epochs))
    weightings = [w for w in LOSS_WEIGHTINGS if not (cfg.privacy.enabled and dp_refusal(w))]
    out: dict[str, dict[str, Any]] = {
        "train": train,
        "model": {
            "fusion": trial.suggest_categorical("fusion", fusions(cfg)),
            "loss_weighting": trial.suggest_categorical("loss_weighting", weightings),
        },
    }
    if federated:
        out["federated"] = {"local_epochs": trial.suggest_int("local_epochs", 1, MAX_LOCAL_EPOCHS)}
    if cfg.privacy.enabled:
        norm = trial.suggest_float("max_grad_norm", 0.1, 10.0, log=True)
        out["privacy"] = {"max_grad_norm": norm}
    return out


SPACE = suggest  # the search space is the code of :func:`suggest`, documented there


def direction(metric: str, specs: Any = None) -> str:
    """Optuna's direction for ``[train] select_metric`` ``metric`` of the declared tasks."""
    return "maximize" if selection.higher_is_better(metric, specs) else "minimize"


def apply(cfg: ExperimentConfig, overrides: dict[str, dict[str, Any]], source: str) -> Any:
    """``cfg`` with ``overrides`` applied, validated like a loaded config."""
    return parse_config(cfg.to_table(), source, name=cfg.name, overrides=overrides)


def tune(
    cfg: ExperimentConfig,
    trials: int,
    *,
    source: str = "config",
    seed: int = 0,
    timeout_s: float | None = None,
    on_trial: Callable[[Trial], None] | None = None,
    runner: Callable[..., dict[str, Any]] | None = None,
    federated: bool = False,
) -> TuneResult:
    """Run the study (see the module docstring); raises UsageError when no trial completed.
    ``runner(cfg, on_epoch=, tags=, run_name=) -> summary`` trains one trial (default
    :func:`veilfed.centralized.run`); ``federated`` tunes local epochs instead of epochs."""
    train_trial = runner or centralized.run
    if trials < 1:
        raise UsageError("--trials: give at least 1")
    metric = cfg.train.select_metric
    goal = direction(metric, cfg.model.task_specs())
    sampler = optuna.samplers.TPESampler(seed=seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=WARMUP_EPOCHS)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=goal, sampler=sampler, pruner=pruner)
    experiment = cfg.tracking.experiment or cfg.name
    parent = tracking.start_run(
        experiment,
        params={"tune": {"trials": trials, "metric": metric, "seed": seed}},
        run_name=f"tune-{cfg.name}",
        tags={"veilfed.kind": "tune"},
    )
    done: list[Trial] = []

    def objective(trial: optuna.Trial) -> float:
        overrides = suggest(trial, cfg, federated)
        trial_cfg = apply(cfg, overrides, source)

        def on_epoch(epoch: int, val: dict[str, dict[str, float]]) -> bool:
            value = selection.metric_value(metric, val)
            if value is None or not math.isfinite(value):
                return False
            trial.report(value, epoch)
            return trial.should_prune()

        summary = train_trial(
            trial_cfg,
            on_epoch=on_epoch,
            tags={"mlflow.parentRunId": parent.run_id, "veilfed.kind": "tune-trial"},
            run_name=f"trial-{trial.number}",
        )
        trial.set_user_attr("run_id", summary["run_id"])
        value = summary["model"]["best_value"]
        if summary["model"].get("stopped_early") and trial.should_prune():
            raise optuna.TrialPruned()
        return float(value)

    def record(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        state = {
            optuna.trial.TrialState.COMPLETE: "complete",
            optuna.trial.TrialState.PRUNED: "pruned",
        }.get(frozen.state, "failed")
        item = Trial(frozen.number, state, frozen.value, dict(frozen.params))
        item.run_id = frozen.user_attrs.get("run_id")
        done.append(item)
        if on_trial is not None:
            on_trial(item)

    with parent.failing_on_error():
        study.optimize(
            objective,
            n_trials=trials,
            timeout=timeout_s,
            callbacks=[record],
            catch=(UsageError,),
            gc_after_trial=True,
        )
        complete = [t for t in done if t.state == "complete" and t.value is not None]
        if not complete:
            raise UsageError(f"{source}: no trial completed; see the trials' MLflow runs")
        best = study.best_trial
        table = apply(cfg, _replay(best.params, cfg, federated), source).to_table()
        parent.log_params({"best": best.params})
        parent.log_metrics(
            {"tune/best_value": float(best.value), "tune/complete": float(len(complete))},
            step=0,
        )
        parent.finish()
    return TuneResult(
        metric=metric,
        direction=goal,
        best_value=float(best.value),
        best_params=dict(best.params),
        best_table=table,
        run_id=parent.run_id,
        trials=done,
    )


def _replay(
    params: dict[str, Any], cfg: ExperimentConfig, federated: bool
) -> dict[str, dict[str, Any]]:
    """The overrides :func:`suggest` produced for ``params`` (a FixedTrial replays them)."""
    return suggest(optuna.trial.FixedTrial(params), cfg, federated)


def toml_table(table: dict[str, Any]) -> dict[str, Any]:
    """A config table TOML can hold: ``None`` fields (unset optionals) are left out."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out[key] = toml_table(value)
        elif value is not None and not (isinstance(value, float) and math.isnan(value)):
            out[key] = value
    return out
