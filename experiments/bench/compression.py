"""Update compression in federated training: bytes per round beside the held-out effect.

The same federated run is simulated once per ``[federated] update_compression`` method, side by
side on this machine (same seed, clients and rounds). Per method: the bytes one client sent per
round (mean over the run) and their ratio to whole fp32 weights, and each task's held-out primary
metric beside its label-only baseline and the margin; ``margin_vs_none`` is the method's margin
minus the uncompressed run's, so the utility effect of compression is read against the same run
without it.

The run is ``experiments/federated.toml`` changed so that the uncompressed run learns something
to lose (128 clips, 4 local epochs of Adam at lr 3e-3, 8 rounds, no DP: ``--epsilon inf``); as
``make demo`` runs it (64 clips, 1 local epoch, DP at ε = 8) every method stays at the baselines
and compression has nothing to lose. ``--epsilon E`` runs it with DP.

    python experiments/bench/compression.py [--quick] [--rounds N] [--fraction F] [--epsilon E]

The last line printed is one JSON object of headline figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from federated import ROOT, SCALE_CONFIG, simulate  # noqa: E402  (a sibling bench script)

METHODS = ("none", "topk", "randk", "int8_update")
LEARNS = {  # experiments/federated.toml -> a run that learns (module docstring)
    "clips = 64": "clips = 128",
    "lr = 0.05": 'optimizer = "adam"\nlr = 0.003',
    "local_epochs = 1": "local_epochs = 4",
}


def config_for(base: str, method: str, fraction: float) -> str:
    """``base`` with the method's ``[federated]`` fields set."""
    fields = f'update_compression = "{method}"\nupdate_fraction = {fraction}\n'
    return base.replace("[federated]\n", "[federated]\n" + fields, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny world, 4 clients, 2 rounds")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--fraction", type=float, default=0.1, help="topk/randk coordinates")
    parser.add_argument("--epsilon", default="inf", help="per-client ε ('inf': no DP)")
    args = parser.parse_args()
    if args.quick:
        base, run_args = SCALE_CONFIG.format(clips=24), ["--clients", "4", "--rounds", "2"]
        base = base.replace("fraction = 0.1\nfraction_evaluate = 0.1", "fraction = 1.0")
    else:
        base = (ROOT / "experiments" / "federated.toml").read_text()
        for old, new in LEARNS.items():
            if old not in base:
                raise SystemExit(f"experiments/federated.toml: no {old!r} to change")
            base = base.replace(old, new, 1)
        run_args = ["--rounds", str(args.rounds), "--epsilon", args.epsilon]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-compression-") as tmp:
        work = Path(tmp)
        for method in METHODS:
            config = work / f"{method}.toml"
            config.write_text(config_for(base, method, args.fraction))
            summary, _, _ = simulate(work, config, run_args)
            comm = summary["comm"]
            tasks = {}
            for task, metric in summary["primary"].items():
                m = summary["margins"].get(task, {}).get(metric)
                if m is not None:
                    tasks[task] = {
                        "metric": metric,
                        "value": round(m["value"], 4),
                        "baseline": round(m["baseline"], 4),
                        "margin": round(m["margin"], 4),
                    }
            rows[method] = {
                "update_bytes": round(comm["update_bytes"]),
                "ratio": round(comm["ratio"], 4),
                "tasks": tasks,
                "wall_s": summary["wall_s"],
            }
            print(json.dumps({method: rows[method]}), flush=True)
    for row in rows.values():
        for task, t in row["tasks"].items():
            none = rows["none"]["tasks"].get(task)
            t["margin_vs_none"] = round(t["margin"] - none["margin"], 4) if none else None
    headline = {
        "bench": "compression",
        "cores": os.cpu_count(),
        "config": "quick" if args.quick else "experiments/federated.toml (learning variant)",
        "rounds": 2 if args.quick else args.rounds,
        "epsilon": None if args.quick else args.epsilon,
        "fraction": args.fraction,
        "methods": rows,
        "bytes_ratio": {m: r["ratio"] for m, r in rows.items()},
    }
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
