"""The console report of a finished run, printed from its summary (``summary.json``)."""

from __future__ import annotations

from typing import Any

import typer

SHOWN_CLIENTS = 20  # per-client lines printed; all of them are in the summary


def report_lines(summary: dict[str, Any]) -> list[str]:
    """The report as lines: per-task metrics, per-client ε, HE sizes, MLflow and audit hints."""
    out = [
        f"run {summary['run_id']}: {summary['rounds']} rounds in {summary['wall_s']:.1f}s "
        f"(strategy {summary['strategy']})",
        "per-task metrics (federated evaluation on held-out shards):",
    ]
    for task, values in sorted(summary["metrics"].items()):
        shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(values.items()))
        out.append(f"  {task:<13} {shown}")
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
