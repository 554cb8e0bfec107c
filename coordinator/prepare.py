"""Preparing a run before any round: config and overrides resolved and checked, MLflow run
opened, run directory laid out; or an existing run reopened.

Everything that can be wrong with the input (config, ε/δ, fraction, store, shards, HE keys) is
checked *before* an MLflow run exists; after that, any failure marks the run FAILED. The run's
state lives in ``<runs-dir>/<mlflow run id>/`` (settings, shards, checkpoint, client nodes), so
:func:`reopen` continues a killed run from its last finished round. Three ways in:
:func:`prepare` (a simulation: ``veilfed simulate``, ``flwr run .``), :func:`prepare_deployment`
(real nodes: the coordinator holds no data, client keys or HE secret) and :func:`reopen`.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from veilfed.config import load_config
from veilfed.coordinator.provision import (
    he_files,
    make_shards,
    provision_signing_keys,
    resolve_he,
    world_store,
)
from veilfed.coordinator.strategies import check_strategy
from veilfed.crypto.he_keys import load_context
from veilfed.crypto.keys import read_key_file
from veilfed.data.store import EncryptedStore
from veilfed.errors import UsageError
from veilfed.federation.rundir import RUNS_DIR, save_shards
from veilfed.federation.sections import ClientPrivacy
from veilfed.federation.settings import SETTINGS_FILE, RunSettings
from veilfed.federation.weights import INITIAL_WEIGHTS
from veilfed.io import write_bytes_atomic
from veilfed.model import create_model, initial_state, load_state, numpy_state
from veilfed.model.init import init_from, read_weights
from veilfed.model.losses import dp_refusal
from veilfed.tracking import Tracker, resume_run, start_run, tracking_uri

log = logging.getLogger("veilfed.coordinator")
INITIAL_WEIGHTS_FILE = "initial_weights.npz"  # --init-from: the global model before round 1


def resolve_privacy(cfg: Any, fed_budget: float, epsilon: float | None, delta: float | None):  # type: ignore[no-untyped-def]
    """Client DP settings: config [privacy], overridden by --epsilon/--delta."""
    p = cfg.privacy
    eps = math.inf
    sigma = 0.0
    if p.enabled:
        eps = p.epsilon if p.epsilon is not None else math.inf
        sigma = p.noise_multiplier if p.noise_multiplier is not None else 0.0
    if epsilon is not None:
        if not epsilon > 0:
            raise UsageError(f"--epsilon must be > 0 (got {epsilon:g}); use 'inf' for no DP")
        eps, sigma = epsilon, 0.0
    d = p.delta if delta is None else delta
    if not 0 < d < 1:
        raise UsageError(f"--delta must be in (0, 1) (got {d:g})")
    return ClientPrivacy(
        epsilon=eps,
        delta=d,
        noise_multiplier=sigma,
        max_grad_norm=p.max_grad_norm,
        budget=fed_budget,
        accountant=p.accountant,
    )


def _resolve(
    config: Path,
    overrides: dict[str, Any],
    epsilon: float | None,
    delta: float | None,
    he: bool,
    device: str | None = None,
):  # type: ignore[no-untyped-def]
    """The experiment config with overrides: (cfg, its table, [federated], client DP, [he])."""
    more = ({"he": {"enabled": True}} if he else {}) | (
        {"train": {"device": device}} if device is not None else {}
    )
    cfg = load_config(config, {"federated": overrides} | more)
    check_client_devices(cfg, "--device" if device is not None else f"{config}: train.device")
    check_strategy(cfg.federated.strategy, f"{config}: federated")
    privacy = resolve_privacy(cfg, cfg.federated.budget, epsilon, delta)
    if privacy.enabled and (why := dp_refusal(cfg.model.loss_weighting)):
        raise UsageError(f"{config}: model.{why}")
    return cfg, cfg.to_table(), cfg.federated, privacy, cfg.he


def check_client_devices(cfg: Any, where: str) -> None:
    """Virtual clients use a GPU only with ``[federated] gpus_per_client > 0``
    (``veilfed.devices``): asking for CUDA without a share refuses before the run starts. (Ray
    checks the shares against the cluster's GPUs, which need not be this machine's.)"""
    if cfg.train.device == "cuda" and cfg.federated.gpus_per_client <= 0:
        raise UsageError(
            f"{where} cuda: virtual clients need a GPU share; set [federated] gpus_per_client "
            "(--gpus-per-client), e.g. 0.5 puts two clients on one GPU"
        )


def _run_params(
    config: Path, cfg: Any, fed: Any, privacy: Any, he_cfg: Any, he_params: Any, store: str
) -> dict[str, Any]:
    """The MLflow params of a run."""
    return {
        "config": str(config),
        "model": {"encoders": cfg.model.encoders, "dim": cfg.model.dim},
        "fusion": cfg.model.fusion,
        "tasks": ",".join(cfg.model.tasks),
        "dp": {
            "epsilon": privacy.epsilon,
            "delta": privacy.delta,
            "noise_multiplier": privacy.noise_multiplier,
            "max_grad_norm": privacy.max_grad_norm,
            "budget": privacy.epsilon_budget,
            "accountant": privacy.accountant,
        },
        "strategy": fed.strategy,
        "federated": {k: v for k, v in vars(fed).items() if k != "strategy"},
        "partitioning": f"{fed.partition}(alpha={fed.alpha})",
        "store": store,
        "seed": cfg.train.seed,
        "train": {"batch_size": cfg.train.batch_size, "lr": cfg.train.lr},
        "he": {"enabled": he_cfg.enabled, "shadow": he_cfg.shadow}
        | (he_params.to_dict() if he_params is not None else {}),
    }


def prepare(
    config: Path,
    overrides: dict[str, Any],
    epsilon: float | None,
    delta: float | None,
    store: Path | None,
    key_file: Path | None,
    runs_dir: Path,
    he: bool = False,
    he_dir: Path | None = None,
    init: str | Path | None = None,
    device: str | None = None,
):  # type: ignore[no-untyped-def]
    """Validate everything, then open the MLflow run and lay out the run directory. ``init``
    names local weights the global model starts from (:func:`initial_weights`); ``device``
    overrides ``[train] device`` (``check_client_devices``)."""
    cfg, raw, fed, privacy, he_cfg = _resolve(config, overrides, epsilon, delta, he, device)
    start = initial_weights(cfg, init) if init is not None else None
    if he_dir is not None and not he_cfg.enabled:
        raise UsageError("--he-dir needs --he (or [he] enabled = true)")
    if (store is None) != (key_file is None):
        raise UsageError("--store and --key-file go together (or give neither to synthesize)")
    if store is None:
        store, key_file = world_store(cfg, runs_dir)
    opened = EncryptedStore.open(store, read_key_file(key_file))
    seed = cfg.train.seed
    missing = {m: f for m, f in (("audio", fed.missing_audio), ("text", fed.missing_text)) if f}
    shards, lacking = make_shards(
        opened, fed.clients, fed.partition, fed.alpha, seed, missing, cfg.model.task_specs()
    )
    smallest = min(len(s) - max(1, round(fed.holdout * len(s))) for s in shards.values())
    privacy.validate(max(1, smallest), "privacy")
    he_params = None
    if he_cfg.enabled:
        he_params = resolve_he(he_cfg, he_dir, shards, fed.holdout)

    experiment = cfg.tracking.experiment or cfg.name
    params = _run_params(config, cfg, fed, privacy, he_cfg, he_params, str(store))
    tracker = start_run(experiment, params, tags={"veilfed.kind": "simulation"})
    with tracker.failing_on_error():
        run_dir = (runs_dir / tracker.run_id).resolve()
        run_dir.mkdir(parents=True, exist_ok=False)
        if he_params is not None:
            he_cfg = he_files(he_cfg, he_params, he_dir, run_dir)
        settings = RunSettings(
            run_id=tracker.run_id,
            run_dir=str(run_dir),
            experiment=experiment,
            config=raw,
            store=str(Path(store).resolve()),
            key_file=str(Path(key_file).resolve()),
            seed=seed,
            federated=fed,
            privacy=privacy,
            tracking_uri=tracking_uri(),
            he=he_cfg,
            extra={} if start is None else {INITIAL_WEIGHTS: INITIAL_WEIGHTS_FILE},
        )
        if start is not None:
            buf = io.BytesIO()
            np.savez(buf, **start)
            write_bytes_atomic(run_dir / INITIAL_WEIGHTS_FILE, buf.getvalue())
        save_shards(run_dir, shards, lacking)
        if privacy.enabled and fed.sign_reports:
            provision_signing_keys(run_dir, sorted(shards))
        settings.save()
    return settings, tracker


def initial_weights(cfg: Any, source: str | Path) -> dict[str, np.ndarray]:
    """The run's starting global model: the seed's initial weights with every tensor of
    ``source`` that fits loaded over them (:func:`veilfed.model.init.init_from`); checked before
    any MLflow run exists. Frozen modules (``[model] freeze``) keep these weights all run."""
    model = load_state(create_model(cfg.model), initial_state(cfg.model, cfg.train.seed))
    state, dropped = read_weights(source)
    report = init_from(model, state, str(source), dropped)
    log.info(
        "--init-from %s: %d tensors loaded, %d keep their initialisation, %d dropped",
        source,
        len(report.loaded),
        len(report.missing),
        len(report.dropped) + len(report.unexpected) + len(report.mismatched),
    )
    return numpy_state(model)


def prepare_deployment(config: Path, clients: int, runs_dir: Path, he_public: Path | None):  # type: ignore[no-untyped-def]
    """A run on real nodes: the coordinator holds no data, no client keys and no HE secret.

    Each node brings its own shard (imported from its bundle), its own report signing key and
    the clients' secret HE context; what must be checked about them is checked when they answer
    discovery (``admission.admit``). ``he_public`` is the public context from
    ``veilfed he keygen``: giving it turns HE on, and a config with ``[he] enabled`` needs it.
    """
    cfg, raw, fed, privacy, he_cfg = _resolve(
        config, {"clients": clients}, None, None, he_public is not None
    )
    privacy.validate(1, "privacy")  # δ against each client's n: at discovery
    he_params = None
    if he_cfg.enabled:
        if he_public is None:
            raise UsageError(
                f"{config}: [he] enabled needs the public HE context: `veilfed coordinator start "
                "--he-context public.ctx` (from `veilfed he keygen`; the nodes get secret.ctx)"
            )
        he_params = load_context(he_public, require_secret=False).params
        he_params.check_aggregation_only(f"--he-context {he_public}")
        if he_cfg.shadow:
            log.warning(
                "%s: [he] shadow is for simulations only; off on real nodes (they never send "
                "plaintext weights)",
                config,
            )
        he_cfg = dataclasses.replace(he_cfg, shadow=False, public_path=str(he_public.resolve()))
    experiment = cfg.tracking.experiment or cfg.name
    params = _run_params(config, cfg, fed, privacy, he_cfg, he_params, "client nodes")
    tracker = start_run(experiment, params, tags={"veilfed.kind": "deployment"})
    with tracker.failing_on_error():
        run_dir = (runs_dir / tracker.run_id).resolve()
        run_dir.mkdir(parents=True, exist_ok=False)
        settings = RunSettings(
            run_id=tracker.run_id,
            run_dir=str(run_dir),
            experiment=experiment,
            config=raw,
            store="",
            key_file="",
            seed=cfg.train.seed,
            federated=fed,
            privacy=privacy,
            tracking_uri=tracking_uri(),
            he=he_cfg,
        )
        settings.save()
    return settings, tracker


def reopen(runs_dir: Path, run_id: str) -> tuple[RunSettings, Tracker]:
    """A prepared run's settings and its MLflow run, to run (again) from its last checkpoint."""
    run_dir = runs_dir / run_id
    if not (run_dir / SETTINGS_FILE).exists():
        raise UsageError(f"--resume {run_id}: no run state in {run_dir}; check --runs-dir")
    settings = RunSettings.load(run_dir)
    return settings, resume_run(run_id)


def prepare_from_run_config(run_config: dict[str, Any]) -> tuple[RunSettings, Tracker]:
    """``flwr run .``: :func:`prepare` from the ``[tool.flwr.app.config]`` keys (0/"" = keep the
    config's value; the keys are documented in ``veilfed.coordinator.server_app``)."""

    def opt(key: str) -> Any:
        value = run_config.get(key)
        return None if value in (None, "", 0) else value

    store, he_dir = opt("store"), opt("he-dir")
    return prepare(
        Path(str(run_config["config"])),
        {k: run_config[k] for k in ("clients", "rounds", "fraction") if opt(k) is not None},
        float(run_config["epsilon"]) if opt("epsilon") is not None else None,
        float(run_config["delta"]) if opt("delta") is not None else None,
        Path(store) if store else None,
        Path(str(run_config["key-file"])) if store else None,
        Path(str(run_config.get("runs-dir") or RUNS_DIR)),
        he=bool(opt("he")),
        he_dir=Path(str(he_dir)) if he_dir else None,
    )
