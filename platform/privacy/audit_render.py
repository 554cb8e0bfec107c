"""Rendering an audit result: the ε-by-round plot, Markdown and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io

from veilfed.privacy.audit_result import AuditResult


def plot_png(result: AuditResult) -> bytes:
    """Claimed (line) and recomputed (x) cumulative ε per client against round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        clients = result.by_client()
        for cid, checks in clients.items():
            rounds = [c.round for c in checks]
            (line,) = ax.plot(rounds, [c.claimed for c in checks], "o-", label=f"{cid} claimed")
            ax.plot(rounds, [c.recomputed for c in checks], "x", color=line.get_color())
        ax.axhline(result.budget, color="red", linestyle="--", linewidth=1)
        ax.set_xlabel("round")
        ax.set_ylabel("cumulative ε")
        ax.set_title(f"run {result.run_id}: claimed (o) vs recomputed (x)")
        if len(clients) <= 10:
            ax.legend(fontsize="small")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()


def _status(result: AuditResult) -> str:
    if result.ok:
        return f"OK: {len(result.checks)} claims from {len(result.key_ids)} clients verified"
    return f"FAILED: {len(result.violations)} violation(s) in {len(result.checks)} claims"


def _tables(result: AuditResult) -> list[tuple[str, list[str], list[list[str]]]]:
    params = [
        [
            cid,
            checks[-1].accountant,
            result.key_ids.get(cid, ""),
            ", ".join(str(c.round) for c in checks),
            ", ".join(sorted({f"{c.noise_multiplier:g}" for c in checks})),
            ", ".join(sorted({f"{c.sample_rate:g}" for c in checks})),
            str(checks[-1].steps_total),
            ", ".join(sorted({f"{c.max_grad_norm:g}" for c in checks})),
            ", ".join(sorted({f"{c.delta:g}" for c in checks})),
        ]
        for cid, checks in result.by_client().items()
    ]
    bad = {(v.client_id, v.round) for v in result.violations}
    claims = [
        [
            c.client_id,
            str(c.round),
            str(c.steps_total),
            f"{c.claimed:.4f}",
            f"{c.recomputed:.4f}",
            f"{c.rel_diff:+.3%}",
            f"{c.budget:g}",
            "VIOLATION" if (c.client_id, c.round) in bad else "ok",
        ]
        for c in result.checks
    ]
    violations = [[v.client_id, str(v.round), v.kind, v.reason] for v in result.violations]
    return [
        (
            "Parameters",
            ["client", "accountant", "key", "rounds", "σ", "q", "steps", "C", "δ"],
            params,
        ),
        (
            "Claimed vs recomputed ε",
            ["client", "round", "steps", "claimed", "recomputed", "diff", "budget", "status"],
            claims,
        ),
        ("Violations", ["client", "round", "kind", "reason"], violations),
    ]


def _intro(result: AuditResult) -> list[str]:
    return [
        f"run `{result.run_id}` in `{result.tracking_uri}`",
        f"budget: {result.budget:g} ({result.budget_source}); δ: {result.delta:g}",
        "ε recomputed independently from each client's signed (σ, q, steps) of every round it "
        "joined: RDP on the report's declared orders, PLD for numerical accountants; a claim "
        "must be at least the recomputation",
        "reports bound to the coordinator's signed round log (run id, round, model digest)",
        *[f"warning: {w}" for w in result.warnings],
    ]


def render_markdown(result: AuditResult, plot_file: str | None = None) -> str:
    lines = [f"# Privacy audit — {_status(result)}", ""]
    lines += [f"- {line}" for line in _intro(result)] + [""]
    if plot_file:
        lines += [f"![cumulative ε by round]({plot_file})", ""]
    for title, header, rows in _tables(result):
        lines += [f"## {title}", ""]
        if not rows:
            lines += ["none", ""]
            continue
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += [
            "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows
        ]
        lines.append("")
    return "\n".join(lines)


def render_html(result: AuditResult, png: bytes) -> str:
    """Self-contained page: the plot is embedded as a base64 data URI."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>Privacy audit {esc(result.run_id)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:2px 6px;text-align:right}"
        ".bad{color:#b00;font-weight:bold}</style></head><body>",
        f"<h1 class='{'' if result.ok else 'bad'}'>Privacy audit — {esc(_status(result))}</h1>",
        "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in _intro(result)) + "</ul>",
        "<img alt='cumulative ε by round' src='data:image/png;base64,"
        + base64.b64encode(png).decode("ascii")
        + "'>",
    ]
    for title, header, rows in _tables(result):
        parts.append(f"<h2>{esc(title)}</h2>")
        if not rows:
            parts.append("<p>none</p>")
            continue
        parts.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        for row in rows:
            cls = " class='bad'" if "VIOLATION" in row or title == "Violations" else ""
            parts.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
