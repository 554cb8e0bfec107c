"""Render the utility benchmark's last line as the README's tables.

    python experiments/bench/utility.py --quick | tee utility.log
    python experiments/results/utility_table.py utility.log

One table of value / baseline per setting and task (the primary metric of each task), one of
each setting's margin over its baseline with the paired bootstrap 95 % interval, and the
utility ratios against ``centralized`` with their goals.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TASKS = (
    "action",
    "sentiment",
    "moderation",
    "qa",
    "caption",
    "quality",
    "summary",
    "detection",
    "segmentation",
    "pose",
    "restoration",
    "next_frame",
)


def last_json(path: Path) -> dict:
    for line in reversed(path.read_text().splitlines()):
        if line.startswith("{") and '"bench"' in line:
            return json.loads(line)
    raise SystemExit(f"{path}: no benchmark JSON line; run experiments/bench/utility.py first")


def fmt(x: float) -> str:
    return f"{x:.2f}" if abs(x) >= 10 else f"{x:.3f}"


def tables(result: dict) -> str:
    # Reference rows (the public model before fine-tuning) print in parentheses.
    settings = result["settings"] | {f"({k})": v for k, v in result.get("reference", {}).items()}
    tasks = [t for t in TASKS if any(t in s for s in settings.values())]
    head = "| setting | " + " | ".join(tasks) + " |\n|---" + "|---" * len(tasks) + "|\n"
    values, margins = head, head
    for name, row in settings.items():
        cells, mcells = [], []
        for t in tasks:
            if t not in row:
                cells.append("—")
                mcells.append("—")
                continue
            r = row[t]
            cells.append(f"{fmt(r['value'])} / {fmt(r['baseline'])}")
            lo, hi = r["margin_ci95"]
            clear = "" if (lo > 0 or hi < 0) else " ∼"
            mcells.append(f"{r['margin']:+.3f} [{lo:+.3f}, {hi:+.3f}]{clear}")
        values += f"| {name} | " + " | ".join(cells) + " |\n"
        margins += f"| {name} | " + " | ".join(mcells) + " |\n"
    metrics = {t: next(s[t]["metric"] for s in settings.values() if t in s) for t in tasks}
    out = "Metrics: " + ", ".join(f"{t} {m}" for t, m in metrics.items()) + ".\n\n"
    out += "Value / label-only baseline:\n\n" + values + "\nMargin over the baseline [95 % CI]"
    out += " (∼: the interval includes 0):\n\n" + margins
    goals = result.get("goals", {})
    if result.get("ratios"):
        out += "\nSetting ÷ centralized on the classification tasks:\n\n"
        out += "| setting | ratios | goal | holds |\n|---|---|---|---|\n"
        for name, ratio in result["ratios"].items():
            text = ", ".join(f"{t} {v:.2f}" for t, v in ratio.items())
            goal = goals.get(name, {})
            target = f"≥ {goal['ratio']}" if goal else "—"
            holds = ("yes" if goal["holds"] else "no") if goal else "—"
            out += f"| {name} | {text} | {target} | {holds} |\n"
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: utility_table.py BENCH_LOG")
    print(tables(last_json(Path(sys.argv[1]))))
