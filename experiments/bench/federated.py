"""Federated simulation benchmark: scale (rounds/min, peak RSS) and utility (ε sweep).

Scale: ``veilfed simulate`` with 10, 100 and 1,000 virtual clients, 10 % sampled (and 10 %
evaluating) per round, on this machine's cores; peak RSS is the whole process tree (driver,
Ray's GCS/raylet, actors), sampled from /proc. Round time should grow linearly with the sampled
clients: ``per_client_ratio`` = (s per sampled client at the largest N) / (same at the smallest).

Utility (per task, beside label-only baselines, centralized / federated / DP / pretrained) is
``experiments/bench/utility.py``'s.

    python experiments/bench/federated.py [--quick]

The last line printed is one JSON object of headline figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VEILFED = str(Path(sys.executable).with_name("veilfed"))

SCALE_CONFIG = """
name = "bench-federated"
[world]
clips = {clips}
frames = 4
size = 16
seed = 1
[model]
dim = 16
pixel_dim = 8
encoders = {{ video = "conv2p1d", audio = "", text = "" }}
tasks = {{ action = 1.0, moderation = 1.0 }}
[train]
batch_size = 2
lr = 0.05
[privacy]
enabled = true
epsilon = 8.0
delta = 1e-4
[federated]
fraction = 0.1
fraction_evaluate = 0.1
min_fit_clients = 1
"""


def _tree_memory(root: int) -> tuple[int, int]:
    """(RSS, PSS) bytes of ``root`` and all its descendants (Linux /proc).

    RSS counts shared pages (torch's libraries in every Ray worker) once per process, so it
    overstates; PSS splits shared pages among their users and sums to the real footprint.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    rss = pss = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            continue
    return rss, pss


def simulate(workdir: Path, config: Path, args: list[str]) -> tuple[dict, float, float]:
    """Run one ``veilfed simulate``; return its summary and its process tree's peak RSS and PSS
    in GiB."""
    summary = workdir / f"summary-{time.monotonic_ns()}.json"
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}")
    cmd = [VEILFED, "simulate", "--config", str(config), "--summary-json", str(summary), *args]
    proc = subprocess.Popen(
        cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    peak = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss, pss = _tree_memory(proc.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"simulate {' '.join(args)} failed: {err.strip().splitlines()[-1:]}")
    return json.loads(summary.read_text()), peak[0] / 2**30, peak[1] / 2**30


def scale(workdir: Path, sizes: list[int], rounds: int) -> list[dict]:
    rows = []
    for n in sizes:
        config = workdir / f"scale-{n}.toml"
        config.write_text(SCALE_CONFIG.format(clips=2 * n + 8))
        summary, rss_gib, pss_gib = simulate(
            workdir, config, ["--clients", str(n), "--rounds", str(rounds)]
        )
        round_s = summary["round_wall_s"]
        sampled = max(1, round(0.1 * n))
        mean_s = sum(round_s) / len(round_s)
        rows.append(
            {
                "clients": n,
                "sampled": sampled,
                "round_s": round(mean_s, 2),
                "rounds_per_min": round(60 / mean_s, 2),
                "s_per_sampled_client": round(mean_s / sampled, 3),
                "peak_rss_gib": round(rss_gib, 2),
                "peak_pss_gib": round(pss_gib, 2),
                "wall_s": summary["wall_s"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 clients, 1 round (< 1 min)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-federated-") as tmp:
        work = Path(tmp)
        sizes = [10] if args.quick else [10, 100, 1000]
        rows = scale(work, sizes, rounds=1 if args.quick else 2)
    first, last = rows[0], rows[-1]
    headline = {
        "bench": "federated",
        "cores": os.cpu_count(),
        "scale": rows,
        "max_clients": last["clients"],
        "peak_rss_gib_max_clients": last["peak_rss_gib"],
        "peak_pss_gib_max_clients": last["peak_pss_gib"],
        "rounds_per_min_max_clients": last["rounds_per_min"],
        "per_client_ratio": round(last["s_per_sampled_client"] / first["s_per_sampled_client"], 2),
    }
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
