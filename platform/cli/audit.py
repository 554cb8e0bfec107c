"""``veilfed audit``: check every ε claim of a run; exit 0 ok, 1 violation, 2 cannot audit."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import click
import typer
from typer.core import TyperGroup

from veilfed.cli.common import handle_errors, print_json
from veilfed.errors import CheckFailed
from veilfed.io import check_new_output, write_bytes_atomic, write_text_atomic

if TYPE_CHECKING:
    from veilfed.privacy.audit_result import AuditResult


class _RunByDefault(TyperGroup):
    """Makes ``veilfed audit RUN_ID ...`` mean ``veilfed audit run RUN_ID ...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_RunByDefault, no_args_is_help=True)


class Format(StrEnum):
    md = "md"
    html = "html"
    json = "json"


PLOT_FILE = "eps_by_round.png"
# An unreachable tracking server must fail in seconds with one line, not retry for minutes.
_MLFLOW_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


@contextlib.contextmanager
def _fail_fast_mlflow() -> Iterator[None]:
    """Apply ``_MLFLOW_ENV`` where the user has not set these variables; restore afterwards."""
    added = [k for k in _MLFLOW_ENV if k not in os.environ]
    os.environ.update({k: _MLFLOW_ENV[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _render(result: AuditResult, fmt: Format, with_plot_file: bool) -> tuple[str, bytes | None]:
    from veilfed.privacy.audit_render import plot_png, render_html, render_markdown

    if fmt is Format.json:
        return json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n", None
    png = plot_png(result)
    if fmt is Format.html:
        return render_html(result, png), None
    return render_markdown(result, PLOT_FILE if with_plot_file else None), png


@app.command("run")
@handle_errors
def run(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of a simulation or training run.")],
    budget: Annotated[
        float | None,
        typer.Option("--budget", help="ε budget; default: the run's signed settings."),
    ] = None,
    delta: Annotated[
        float | None,
        typer.Option("--delta", help="δ for the budget check; default: the run's signed settings."),
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", help="Report format.")] = Format.md,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write audit.<format> (and the plot) here; else stdout."),
    ] = None,
    keys: Annotated[
        Path | None,
        typer.Option(
            "--keys",
            help="Directory of trusted public keys: <client>.pub and coordinator.pem (the "
            "coordinator's <run_dir>/keys); default: the run's own artifacts, with a warning.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing report in --out.")
    ] = False,
) -> None:
    """Verify signatures, hash chains and the signed round log, recompute every ε, flag violations.

    The store is MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory.
    """
    from veilfed.privacy.audit_load import audit_run

    if out is not None:
        check_new_output(out / f"audit.{fmt.value}", force)
    with _fail_fast_mlflow():
        result = audit_run(run_id, budget=budget, delta=delta, keys_dir=keys)
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    text, png = _render(result, fmt, with_plot_file=out is not None)
    if out is None:
        typer.echo(text, nl=False)
    else:
        target = out / f"audit.{fmt.value}"
        if png is not None:
            check_new_output(out / PLOT_FILE, force)
            write_bytes_atomic(out / PLOT_FILE, png, overwrite=force)
        write_text_atomic(target, text, overwrite=force)
        typer.echo(f"wrote {target}")
    if not result.ok:
        first = result.violations[0]
        more = len(result.violations) - 1
        raise CheckFailed(f"{first}" + (f" (and {more} more violation(s))" if more else ""))


@app.command("canary")
@handle_errors
def canary(
    config: Annotated[
        Path, typer.Option("--config", help="Experiment TOML: [privacy] and optional [canary].")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Empirical ε lower bound from one DP-SGD run with canaries; exit 1 if above the claim."""
    from veilfed.privacy.canary import load_canary_config, run_canary_audit

    settings, dp = load_canary_config(config)
    result = run_canary_audit(settings, dp)
    if as_json:
        print_json(result.to_dict())
    else:
        typer.echo(
            f"canary audit: {result.correct}/{result.guesses} guesses correct over "
            f"{result.canaries} canaries ({result.included} included); epsilon lower bound "
            f"{result.epsilon_lower:.3f} at {result.confidence:.0%} confidence vs claimed "
            f"{result.epsilon_claimed:.3f} (delta={result.delta:g}, sigma="
            f"{result.noise_multiplier:.3g}, q={result.sample_rate:.3g}, steps={result.steps})"
        )
    if not result.ok:
        raise CheckFailed(
            f"{config}: empirical epsilon lower bound {result.epsilon_lower:.3f} exceeds the "
            f"claimed {result.epsilon_claimed:.3f} at {result.confidence:.4g} confidence; the "
            "DP-SGD pipeline leaks more than it accounts"
        )
