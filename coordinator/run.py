"""A simulation run's lifecycle: prepare (checks, store, shards, keys, MLflow), run inside a
ServerApp (``flwr run .``, or Flower's simulation engine on Ray through
``veilfed.launch.simulation``), resume, finish and report.

Everything that can be wrong with the input (config, ε/δ, fraction, store, shards) is checked
*before* an MLflow run exists; after that, any failure marks the run FAILED. The run's state lives
in ``<runs-dir>/<mlflow run id>/`` (settings, shards, checkpoint, client nodes), so a resumed run
continues a killed one from its last finished round. ``veilfed simulate`` (veilfed.cli.simulate)
and the ServerApps call this module; it never imports the CLI.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

from veilfed.coordinator.strategies import check_strategy
from veilfed.errors import UsageError
from veilfed.federation.rundir import RUNS_DIR, SIGNING_KEY_FILE, client_dir, save_shards
from veilfed.federation.sections import ClientPrivacy
from veilfed.federation.settings import SETTINGS_FILE, RunSettings
from veilfed.privacy.reports import KeyRegistry, generate_signing_key, public_key_path

SHOWN_CLIENTS = 20  # per-client lines printed; all of them are in the summary


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


def _world_store(cfg: Any, runs_dir: Path) -> tuple[Path, Path]:
    """The config's synthetic world as an encrypted store, built once per world and reused."""
    from veilfed.crypto.keys import write_key_file
    from veilfed.data import synth
    from veilfed.data.files import encode_clip
    from veilfed.data.store import EncryptedStore

    world = cfg.world.world_config()
    spec = json.dumps({"world": world.to_dict(), "clips": cfg.world.clips}, sort_keys=True)
    home = runs_dir / "stores" / hashlib.sha256(spec.encode()).hexdigest()[:16]
    store, key = home / "store", home / "store.key"
    if (home / "complete").exists():
        return store, key
    if home.exists():
        import shutil

        shutil.rmtree(home)  # an interrupted build: start over
    fkey = write_key_file(key)
    enc = EncryptedStore.create(store, fkey)
    with enc.batch():
        for clip in synth.iter_world(world, cfg.world.clips):
            enc.put(clip.clip_id, encode_clip(clip), clip.labels)
    (home / "complete").write_text(spec)
    return store, key


def make_shards(
    store: Any,
    num_clients: int,
    scheme: str,
    alpha: float,
    seed: int,
    missing: dict[str, float] | None = None,
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Partition the store's clip ids among clients (Dirichlet skew over the action label);
    also which modalities each client lacks (``missing``: modality -> fraction of clients)."""
    from veilfed.data.partition import partition

    ids = sorted(store.ids())
    labels = [0] * len(ids)
    if scheme == "dirichlet":
        labels = [int(store.read(i)[1].get("action", 0)) for i in ids]
    parts = partition(labels, num_clients, scheme=scheme, alpha=alpha, seed=seed, missing=missing)
    shards = {p.client_id: [ids[i] for i in p.indices] for p in parts}
    for cid, share in shards.items():
        if len(share) < 2:
            raise UsageError(
                f"client {cid}: shard has {len(share)} clip(s); each client needs >= 2 (train + "
                f"held-out). Use fewer --clients or a bigger world ({len(ids)} clips)"
            )
    return shards, {p.client_id: list(p.missing) for p in parts if p.missing}


def _resolve(
    config: Path,
    overrides: dict[str, Any],
    epsilon: float | None,
    delta: float | None,
    he: bool,
):  # type: ignore[no-untyped-def]
    """The experiment config with overrides: (cfg, its table, [federated], client DP, [he])."""
    from veilfed.config import load_config

    cfg = load_config(config, {"federated": overrides} | ({"he": {"enabled": True}} if he else {}))
    check_strategy(cfg.federated.strategy, f"{config}: federated")
    privacy = resolve_privacy(cfg, cfg.federated.budget, epsilon, delta)
    return cfg, cfg.to_table(), cfg.federated, privacy, cfg.he


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
):  # type: ignore[no-untyped-def]
    """Validate everything, then open the MLflow run and lay out the run directory."""
    from veilfed.tracking import start_run, tracking_uri

    cfg, raw, fed, privacy, he_cfg = _resolve(config, overrides, epsilon, delta, he)
    if he_dir is not None and not he_cfg.enabled:
        raise UsageError("--he-dir needs --he (or [he] enabled = true)")
    if (store is None) != (key_file is None):
        raise UsageError("--store and --key-file go together (or give neither to synthesize)")
    if store is None:
        store, key_file = _world_store(cfg, runs_dir)
    from veilfed.crypto.keys import read_key_file
    from veilfed.data.store import EncryptedStore

    opened = EncryptedStore.open(store, read_key_file(key_file))
    seed = cfg.train.seed
    missing = {m: f for m, f in (("audio", fed.missing_audio), ("text", fed.missing_text)) if f}
    shards, lacking = make_shards(opened, fed.clients, fed.partition, fed.alpha, seed, missing)
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
        )
        save_shards(run_dir, shards, lacking)
        if privacy.enabled and fed.sign_reports:
            provision_signing_keys(run_dir, sorted(shards))
        settings.save()
    return settings, tracker


def prepare_deployment(config: Path, clients: int, runs_dir: Path, he_public: Path | None):  # type: ignore[no-untyped-def]
    """A run on real nodes: the coordinator holds no data, no client keys and no HE secret.

    Each node brings its own shard (imported from its bundle), its own report signing key and
    the clients' secret HE context; what must be checked about them is checked when they answer
    discovery (``Coordinator._admit``). ``he_public`` is the public context from
    ``veilfed he keygen``: giving it turns HE on, and a config with ``[he] enabled`` needs it.
    """
    from veilfed.tracking import start_run, tracking_uri

    cfg, raw, fed, privacy, he_cfg = _resolve(
        config, {"clients": clients}, None, None, he_public is not None
    )
    privacy.validate(1, "privacy")  # δ against each client's n: at discovery
    he_params = None
    if he_cfg.enabled:
        from veilfed.crypto.he import load_context

        if he_public is None:
            raise UsageError(
                f"{config}: [he] enabled needs the public HE context: `veilfed coordinator start "
                "--he-context public.ctx` (from `veilfed he keygen`; the nodes get secret.ctx)"
            )
        he_params = load_context(he_public, require_secret=False).params
        he_params.check_aggregation_only(f"--he-context {he_public}")
        if he_cfg.shadow:
            import logging

            logging.getLogger("veilfed.coordinator").warning(
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


def provision_signing_keys(run_dir: str | Path, client_ids: list[str]) -> KeyRegistry:
    """Give every virtual client a report signing key and register the public halves.

    A real node creates its own key and the coordinator pins the public half it offers at
    discovery (``Coordinator._admit``); in a simulation the run setup plays both parts, writing
    each key where the client's state keeps it (``veilfed.federation.rundir``).
    """
    registry = KeyRegistry(Path(run_dir) / "keys")
    for cid in client_ids:
        key = client_dir(run_dir, cid) / SIGNING_KEY_FILE
        if not key.exists():
            generate_signing_key(key)
        registry.register(cid, public_key_path(key))
    return registry


def resolve_he(he_cfg: Any, he_dir: Path | None, shards: dict[str, list[str]], holdout: float):  # type: ignore[no-untyped-def]
    """HE parameters: the given keys' (both files checked, same key id) or sized from [he].

    The total sample count of a round must fit the keys: checked here against all training
    examples, so no round can fail on it later.
    """
    from veilfed.crypto.he import HEParams, load_context
    from veilfed.crypto.he_keys import PUBLIC_NAME, SECRET_NAME

    if he_dir is not None:
        public = load_context(he_dir / PUBLIC_NAME, require_secret=False)
        secret = load_context(he_dir / SECRET_NAME, require_secret=True)
        if public.key_id != secret.key_id:
            raise UsageError(
                f"--he-dir {he_dir}: {PUBLIC_NAME} and {SECRET_NAME} are from different keygens; "
                "run `veilfed he keygen --out DIR --force`"
            )
        params = public.params
        params.check_aggregation_only(f"--he-dir {he_dir}")
    else:
        params = HEParams.for_bounds(
            he_cfg.max_abs_update, he_cfg.max_total_weight, he_cfg.tolerance
        )
    total = sum(len(s) - max(1, round(holdout * len(s))) for s in shards.values())
    if total > params.max_total_weight:
        raise UsageError(
            f"[he] max_total_weight {params.max_total_weight} < {total} training examples a round "
            "may sum; raise it (or regenerate --he-dir keys with a larger --max-total-weight)"
        )
    return params


def he_files(he_cfg: Any, params: Any, he_dir: Path | None, run_dir: Path) -> Any:  # type: ignore[no-untyped-def]
    """Key files for the run: the given ones, or fresh keys in ``<run>/he/``.

    In simulation every virtual client reads ``secret.ctx`` from the run directory and the
    coordinator only ever loads ``public.ctx``; on real nodes the secret file is distributed to
    the clients only (docs/he.md).
    """
    from veilfed.crypto.he import keygen
    from veilfed.crypto.he_keys import PUBLIC_NAME, SECRET_NAME

    if he_dir is None:
        secret, public = keygen(run_dir / "he", params)
    else:
        secret, public = he_dir / SECRET_NAME, he_dir / PUBLIC_NAME
    return dataclasses.replace(
        he_cfg, secret_path=str(secret.resolve()), public_path=str(public.resolve())
    )


def reopen(runs_dir: Path, run_id: str):  # type: ignore[no-untyped-def]
    from veilfed.tracking import resume_run

    run_dir = runs_dir / run_id
    if not (run_dir / SETTINGS_FILE).exists():
        raise UsageError(f"--resume {run_id}: no run state in {run_dir}; check --runs-dir")
    settings = RunSettings.load(run_dir)
    return settings, resume_run(run_id)


# -- running ------------------------------------------------------------------------------------
def run_from_flwr_config(grid: Any, run_config: dict[str, Any]) -> None:
    """``flwr run .``: the same run, prepared from [tool.flwr.app.config] inside the ServerApp."""

    def opt(key: str) -> Any:
        value = run_config.get(key)
        return None if value in (None, "", 0) else value

    store = opt("store")
    he_dir = opt("he-dir")
    settings, tracker = prepare(
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
    run_on_grid(grid, settings, tracker)


def run_on_grid(
    grid: Any, settings: Any, tracker: Any, node_clients: dict[int, str] | None = None
) -> None:
    """The coordinator's rounds on a Flower grid (inside a ServerApp), then summary and report;
    ``node_clients``: the client id each authenticated node must be (real nodes)."""
    from veilfed.coordinator.server_app import Coordinator

    start = time.perf_counter()
    with tracker.failing_on_error():
        Coordinator(grid, settings, tracker, node_clients).run()
        print_report(finish(settings, tracker, time.perf_counter() - start))


# -- results ------------------------------------------------------------------------------------
def summary_of(settings: Any, ckpt: Any, wall_s: float) -> dict[str, Any]:
    """summary.json exactly as ../shared/DESIGN.md specifies (plus run-specific extras)."""
    last = ckpt.history[-1] if ckpt.history else {"metrics": {}}
    metrics: dict[str, dict[str, float]] = {}
    for key, value in last["metrics"].items():
        if key.startswith("eval/"):
            _, task, metric = key.split("/", 2)
            metrics.setdefault(task, {})[metric] = value
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
        "metrics": metrics,
        "clients": clients,
        "he": he_summary(settings, ckpt.history),
        "strategy": settings.federated.strategy,
        "private": settings.privacy.enabled,
        "exhausted": dict(ckpt.exhausted),
        "round_wall_s": [h["metrics"]["round/wall_s"] for h in ckpt.history],
        "run_dir": settings.run_dir,
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


def finish(settings: Any, tracker: Any, wall_s: float) -> dict[str, Any]:
    """Artifacts (summary, per-task table, ε plot) and the run marked FINISHED."""
    from veilfed.coordinator import checkpoint

    ckpt = checkpoint.load(settings.run_dir)
    if ckpt is None:
        raise UsageError(f"run {settings.run_id}: no finished round to summarize")
    summary = summary_of(settings, ckpt, wall_s)
    tracker.log_json(summary, "summary.json")
    tracker.log_text(metrics_table(ckpt.history), "metrics/per_task.md")
    figure = epsilon_plot(ckpt.history)
    if figure is not None:
        tracker.log_figure(figure, "plots/epsilon_vs_round.png")
    tracker.finish("FINISHED")
    return summary


def metrics_table(history: list[dict[str, Any]]) -> str:
    """Markdown table: one row per round, one column per eval/<task>/<metric>."""
    keys = sorted({k for h in history for k in h["metrics"] if k.startswith("eval/")})
    lines = ["| round | " + " | ".join(k[5:] for k in keys) + " |"]
    lines.append("|---" * (len(keys) + 1) + "|")
    for h in history:
        cells = [f"{h['metrics'][k]:.4f}" if k in h["metrics"] else "" for k in keys]
        lines.append(f"| {h['round']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def epsilon_plot(history: list[dict[str, Any]]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [h["round"] for h in history if "privacy/eps_max" in h["metrics"]]
    if not rounds:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2))
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


def print_report(summary: dict[str, Any]) -> None:
    print(
        f"run {summary['run_id']}: {summary['rounds']} rounds in {summary['wall_s']:.1f}s "
        f"(strategy {summary['strategy']})"
    )
    print("per-task metrics (federated evaluation on held-out shards):")
    for task, values in sorted(summary["metrics"].items()):
        shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(values.items()))
        print(f"  {task:<13} {shown}")
    if summary["clients"]:
        eps = [c["epsilon"] for c in summary["clients"].values()]
        print(
            "per-client privacy (cumulative over every round joined; epsilon max "
            f"{max(eps):.3f}, mean {sum(eps) / len(eps):.3f} over {len(eps)} clients):"
        )
        for cid, c in list(summary["clients"].items())[:SHOWN_CLIENTS]:
            print(
                f"  {cid}: epsilon={c['epsilon']:.3f} delta={c['delta']:g} rounds={c['rounds']} "
                f"steps={c['steps']} sigma={c['noise_multiplier']:.3f} q={c['sample_rate']:.3f}"
            )
        if len(eps) > SHOWN_CLIENTS:
            print(f"  ... {len(eps) - SHOWN_CLIENTS} more in the summary (--summary-json)")
    elif not summary["private"]:
        print("no client-side DP (non-private run)")
    for cid, reason in summary["exhausted"].items():
        print(f"  {cid} stopped: {reason}")
    he = summary["he"]
    if he["enabled"]:
        ratio = he["ciphertext_bytes"] / max(he["plaintext_bytes"], 1)
        err = he["max_abs_error"]
        print(
            f"HE secure aggregation: {he['ciphertext_bytes']} ciphertext bytes per client update "
            f"({ratio:.2f}x fp32)"
            + (f", max abs error vs plaintext FedAvg {err:.3g}" if err is not None else "")
        )
    uri = summary["tracking_uri"]
    print(
        f"MLflow: mlflow ui --backend-store-uri {uri}  (then open http://127.0.0.1:5000, "
        f"run {summary['run_id']})"
    )
    if summary["private"]:
        # keys/ holds the clients' registered keys and the coordinator's round-log key
        print(f"audit: veilfed audit {summary['run_id']} --keys {summary['run_dir']}/keys")
