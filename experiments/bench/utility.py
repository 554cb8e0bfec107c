"""Utility benchmark: per task, what each way of training reaches on the same held-out clips,
beside the label-only baseline of the same clips.

Every setting trains on the same public synthetic world (the training clips), and its final model
(loaded back from MLflow with ``veilfed.model.load``) is scored by ``veilfed.model.score`` on the
same held-out clips of a world seed no setting trained on, against label-only baselines fitted on
the training clips' labels; intervals are a paired bootstrap over the held-out clips.

Settings: ``centralized`` (``veilfed train``, non-private); ``federated`` (``veilfed simulate``,
8 clients, IID, non-private); ``federated_dirichlet`` (Dirichlet α = 0.5 label skew);
``dp_eps1`` / ``dp_eps4`` / ``dp_eps8`` (federated, client-side DP-SGD at that per-client ε,
δ ≤ 1 / (10 n) of the smallest client); ``pretrained_dp_eps1`` / ``pretrained_dp_eps8`` (the same
after non-private pretraining on a public world with another seed, ``--init-from``). ``--quick``
(within 30 minutes on 2 cores) runs a smaller world and only ``centralized``, ``federated`` and
``dp_eps8``.

    python experiments/bench/utility.py [--quick] [--settings centralized,dp_eps8]

The last line printed is one JSON object: ``{"bench": "utility", "settings": {SETTING: {TASK:
{"metric", "higher_is_better", "value", "baseline", "ci95"}}}, "ratios": {...}, "goals": {...}}``
where ``ratios`` are each setting's value over ``centralized``'s on the classification tasks and
``goals`` the utility goals (federated ≥ 0.95, dp_eps8 ≥ 0.9, pretrained_dp_eps1 ≥ 0.9 of
centralized) with whether each holds. With a pretrained setting, ``reference`` adds
``public_pretrained``: the public model scored before any private fine-tuning, which separates
what pretraining brings from what the private rounds add.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VEILFED = str(Path(sys.executable).with_name("veilfed"))
CLASSIFICATION = ("action", "sentiment", "moderation", "qa")
ALL = (
    "centralized",
    "federated",
    "federated_dirichlet",
    "dp_eps1",
    "dp_eps4",
    "dp_eps8",
    "pretrained_dp_eps1",
    "pretrained_dp_eps8",
)
QUICK = ("centralized", "federated", "dp_eps8")
GOALS = {"federated": 0.95, "dp_eps8": 0.9, "pretrained_dp_eps1": 0.9}
PRETRAIN_SEED_OFFSET = 500  # the public pretraining world: another seed, same distribution


def sizes(quick: bool, smoke: bool = False) -> dict[str, int]:
    """World and run sizes; each client holds ``per_client`` clips (a quarter held out).

    Centralized training makes ``rounds x local_epochs`` passes over the pooled clips, so every
    setting sees each training clip equally often.
    """
    if smoke:  # seconds per setting: checks the pipeline, its figures mean nothing
        return {
            "clients": 2,
            "per_client": 8,
            "test": 8,
            "frames": 4,
            "size": 32,
            "rounds": 1,
            "local_epochs": 1,
        }
    if quick:
        return {
            "clients": 8,
            "per_client": 96,
            "test": 128,
            "frames": 8,
            "size": 32,
            "rounds": 6,
            "local_epochs": 2,
        }
    return {
        "clients": 8,
        "per_client": 256,
        "test": 256,
        "frames": 16,
        "size": 64,
        "rounds": 12,
        "local_epochs": 2,
    }


def config_text(base: Path, s: dict[str, int], seed: int, partition: str = "iid") -> str:
    """The bench config: ``base`` (experiments/utility.toml) resized to ``s``."""
    import tomllib

    import tomli_w

    table = tomllib.loads(base.read_text())
    world = table.setdefault("world", {})
    world.update(
        clips=s["clients"] * s["per_client"],
        eval_clips=s["test"],
        frames=s["frames"],
        size=s["size"],
        seed=seed,
    )
    table.setdefault("train", {})["epochs"] = s["rounds"] * s["local_epochs"]
    fed = table.setdefault("federated", {})
    fed.update(
        clients=s["clients"],
        rounds=s["rounds"],
        local_epochs=s["local_epochs"],
        fraction=1.0,
        fraction_evaluate=1.0,
        min_fit_clients=s["clients"] // 2,
    )
    table.setdefault("privacy", {})["enabled"] = False
    table.setdefault("tracking", {})["experiment"] = "bench-utility"
    return tomli_w.dumps(table)


def delta_for(smallest: int) -> float:
    """The largest power of ten at most 1 / (10 n)."""
    return 10.0 ** math.floor(math.log10(1 / (10 * smallest)))


def veilfed(work: Path, args: list[str]) -> dict[str, Any]:
    """Run one ``veilfed`` command in ``work`` and return its --summary-json."""
    summary = work / f"summary-{time.monotonic_ns()}.json"
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}")
    cmd = [VEILFED, *args, "--summary-json", str(summary)]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"veilfed {' '.join(args)} failed: {tail}")
    return json.loads(summary.read_text())


def score_model(work: Path, uri: str, config: Path) -> dict[str, dict[str, Any]]:
    """``uri`` scored on the config's held-out clips against baselines of its training labels."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    from veilfed.centralized import baseline_batches, loaders
    from veilfed.config import load_config
    from veilfed.metrics import fit_baselines
    from veilfed.model import load, score

    cfg = load_config(config)
    train, test, _ = loaders(cfg)
    model = load(uri)
    baselines = fit_baselines(model.task_specs, baseline_batches(train))
    scores = score(model, test, baselines, bootstrap=1000, seed=0)
    out = {}
    for task, metric in scores.primary.items():
        m = scores.margins[task][metric]
        out[task] = {
            "metric": metric,
            "higher_is_better": m["higher_is_better"],
            "value": m["value"],
            "baseline": m["baseline"],
            "ci95": m["ci95"],
            "margin": m["margin"],
            "margin_ci95": m["margin_ci95"],
        }
    return out


def run_setting(
    name: str, work: Path, configs: dict[str, Path], s: dict[str, int], pretrained: str
) -> str:
    """Train ``name``; return its final model's URI."""
    if name == "centralized":
        return veilfed(work, ["train", "--config", str(configs["iid"])])["model"]["final"]
    partition = "dirichlet" if name == "federated_dirichlet" else "iid"
    args = ["simulate", "--config", str(configs[partition])]
    if "dp_eps" in name:
        eps = name.rsplit("eps", 1)[1]
        smallest = s["per_client"] - max(1, round(0.25 * s["per_client"]))
        args += ["--epsilon", eps, "--delta", f"{delta_for(smallest):g}"]
    if name.startswith("pretrained_"):
        args += ["--init-from", pretrained]
    return veilfed(work, args)["model"]["final"]


def ratios(settings: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    central = settings.get("centralized", {})
    out: dict[str, dict[str, float]] = {}
    for name, tasks in settings.items():
        if name == "centralized":
            continue
        out[name] = {
            t: round(tasks[t]["value"] / central[t]["value"], 3)
            for t in CLASSIFICATION
            if t in tasks and t in central and central[t]["value"] > 0
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small world, 3 settings, < 30 min")
    parser.add_argument("--settings", default="", help="comma-separated subset of the settings")
    parser.add_argument("--seed", type=int, default=7, help="the training world's seed")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: pipeline check only")
    args = parser.parse_args()
    chosen = [x for x in args.settings.split(",") if x] or list(QUICK if args.quick else ALL)
    unknown = sorted(set(chosen) - set(ALL))
    if unknown:
        raise SystemExit(f"--settings: unknown {unknown}; choose from {', '.join(ALL)}")
    s = sizes(args.quick, args.smoke)
    base = ROOT / "experiments" / "utility.toml"
    results: dict[str, dict[str, Any]] = {}
    reference: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-utility-") as tmp:
        work = Path(tmp)
        configs = {p: work / f"utility-{p}.toml" for p in ("iid", "dirichlet")}
        for partition, path in configs.items():
            path.write_text(config_text(base, s, args.seed, partition))
        pretrained = ""
        if any(c.startswith("pretrained_") for c in chosen):
            public = work / "public.toml"
            public.write_text(config_text(base, s, args.seed + PRETRAIN_SEED_OFFSET))
            pretrained = veilfed(work, ["train", "--config", str(public)])["model"]["final"]
            # The public model alone, before any private fine-tuning: what pretraining brings.
            scores = score_model(work, pretrained, configs["iid"])
            reference["public_pretrained"] = scores
            print(json.dumps({"reference": "public_pretrained", "tasks": scores}), flush=True)
        for name in chosen:
            start = time.perf_counter()
            uri = run_setting(name, work, configs, s, pretrained)
            results[name] = score_model(work, uri, configs["iid"])
            row = {"setting": name, "wall_s": round(time.perf_counter() - start, 1)}
            print(json.dumps(row | {"tasks": results[name]}), flush=True)
    r = ratios(results)
    goals = {
        name: {"ratio": goal, "holds": bool(r.get(name)) and min(r[name].values()) >= goal}
        for name, goal in GOALS.items()
        if name in r
    }
    out = {"bench": "utility", "settings": results, "ratios": r, "goals": goals}
    print(json.dumps(out | ({"reference": reference} if reference else {})))


if __name__ == "__main__":
    main()
