"""The console report of a finished run, printed from its summary (``summary.json``).

The per-task table is the same for ``veilfed train`` and ``veilfed simulate`` (:func:`score_rows`):
each task's primary metric, its value, the label-only baseline, the margin and the margin's
95 % interval, with a verdict that is "above"/"below" only when that interval clears 0.
"""

from __future__ import annotations

from typing import Any

import typer

SHOWN_CLIENTS = 20  # per-client lines printed; all of them are in the summary
SCORE_COLUMNS = ("task", "metric", "value", "baseline", "margin", "margin 95% CI", "verdict")
NO_BASELINE = "n/a"


def _num(value: Any, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def verdict(entry: dict[str, Any]) -> str:
    """``above`` / ``below`` the baseline when the margin's interval clears 0 (in the metric's
    better direction), ``within`` when it straddles 0, ``no CI`` without an interval (``n/a``
    in the table: no baseline)."""
    ci = entry.get("margin_ci95")
    if ci is None:
        return "no CI"
    lo, hi = ci
    better = entry.get("higher_is_better", True)
    if (lo > 0 and better) or (hi < 0 and not better):
        return "above"
    if (hi < 0 and better) or (lo > 0 and not better):
        return "below"
    return "within"


def score_rows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per task (:data:`SCORE_COLUMNS`): its primary metric beside its baseline."""
    rows = []
    primary = summary.get("primary", {})
    margins = summary.get("margins", {})
    for task, values in sorted(summary["metrics"].items()):
        metric = primary.get(task, "")
        entry = margins.get(task, {}).get(metric)
        if entry is None:
            value = values.get(metric)
            rows.append((task, metric or "-", _num(value), "-", "-", "-", NO_BASELINE))
            continue
        ci = entry.get("margin_ci95")
        rows.append(
            (
                task,
                metric,
                _num(entry["value"]),
                _num(entry["baseline"]),
                _num(entry["margin"], signed=True),
                f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci is not None else "-",
                verdict(entry),
            )
        )
    return rows


def score_lines(summary: dict[str, Any]) -> list[str]:
    """:func:`score_rows` as aligned text lines, header first."""
    rows = [SCORE_COLUMNS, *score_rows(summary)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(SCORE_COLUMNS))]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]


def report_lines(summary: dict[str, Any]) -> list[str]:
    """The report as lines: per-task metrics, per-client ε, HE sizes, MLflow and audit hints."""
    out = [
        f"run {summary['run_id']}: {summary['rounds']} rounds in {summary['wall_s']:.1f}s "
        f"(strategy {summary['strategy']})",
        "per-task metrics (federated evaluation on held-out shards; baselines fitted on each "
        "client's training shard; margin 95% CI over clients):",
        *score_lines(summary),
    ]
    spread = summary.get("clients_spread", {})
    if spread:
        out.append("per-client spread of the primary metric (last round):")
        for task, metrics in sorted(spread.items()):
            for metric, s in sorted(metrics.items()):
                out.append(
                    f"  {task:<13} {metric}: mean {s['mean']:.4f}, worst 10% {s['worst10']:.4f}, "
                    f"min {s['min']:.4f}"
                )
    if summary["clients"]:
        eps = [c["epsilon"] for c in summary["clients"].values()]
        out.append(
            "per-client privacy (cumulative over every round joined; epsilon max "
            f"{max(eps):.3f}, mean {sum(eps) / len(eps):.3f} over {len(eps)} clients):"
        )
        for cid, c in list(summary["clients"].items())[:SHOWN_CLIENTS]:
            out.append(
                f"  {cid}: epsilon={c['epsilon']:.3f} delta={c['delta']:g} rounds={c['rounds']} "
                f"steps={c['steps']} sigma={c['noise_multiplier']:.3f} q={c['sample_rate']:.3f}"
            )
        if len(eps) > SHOWN_CLIENTS:
            out.append(f"  ... {len(eps) - SHOWN_CLIENTS} more in the summary (--summary-json)")
    elif not summary["private"]:
        out.append("no client-side DP (non-private run)")
    for cid, reason in summary["exhausted"].items():
        out.append(f"  {cid} stopped: {reason}")
    he = summary["he"]
    if he["enabled"]:
        ratio = he["ciphertext_bytes"] / max(he["plaintext_bytes"], 1)
        err = he["max_abs_error"]
        out.append(
            f"HE secure aggregation: {he['ciphertext_bytes']} ciphertext bytes per client update "
            f"({ratio:.2f}x fp32)"
            + (f", max abs error vs plaintext FedAvg {err:.3g}" if err is not None else "")
        )
    comm = summary.get("comm") or {}
    if comm.get("update_compression", "none") != "none" and comm.get("ratio") is not None:
        out.append(
            f"update compression {comm['update_compression']}: {comm['update_bytes']:.0f} bytes "
            f"per client update ({comm['ratio']:.3f}x the whole model)"
        )
    uri = summary["tracking_uri"]
    out.append(
        f"MLflow: mlflow ui --backend-store-uri {uri}  (then open http://127.0.0.1:5000, "
        f"run {summary['run_id']})"
    )
    if summary["private"]:
        # keys/ holds the clients' registered keys and the coordinator's round-log key
        out.append(f"audit: veilfed audit {summary['run_id']} --keys {summary['run_dir']}/keys")
    return out


def print_report(summary: dict[str, Any]) -> None:
    for line in report_lines(summary):
        typer.echo(line)


def print_models(entry: dict[str, Any], unit: str, registry: dict[str, Any] | None = None) -> None:
    """One line per logged model: ``final model: URI`` and ``best model: URI (<unit> N, ...)``
    (``unit``: "round" for a federated run, "epoch" for ``veilfed train``), then the registry
    version the best model became (``--register``)."""
    if entry.get("final"):
        typer.echo(f"final model: {entry['final']}")
    if entry.get("best"):
        value = entry.get("best_value")
        how = f"{entry.get('select_metric')} = {value:.4g}" if value is not None else "no score"
        typer.echo(f"best model: {entry['best']} ({unit} {entry.get('best_round')}, {how})")
    if registry:
        name, version = registry["name"], registry["version"]
        typer.echo(
            f"registered: models:/{name}/{version} as {registry['alias']} "
            f"(champion: version {registry['champion']}, models:/{name}@champion)"
        )
