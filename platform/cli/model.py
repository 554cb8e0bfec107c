"""``veilfed model``: list the registries; check every model combination against Opacus."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from veilfed.cli.common import console, handle_errors, print_json
from veilfed.errors import CheckFailed

app = typer.Typer(no_args_is_help=True)
_stdout = Console()


@app.command("list")
@handle_errors
def list_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print the registries as JSON."),
) -> None:
    """Every registry: encoders, fusions, heads, losses, augmentations, compressions."""
    from veilfed.model import list_registries

    registries = list_registries()
    if as_json:
        print_json(registries)
        return
    table = Table(title="veilfed registries")
    table.add_column("registry")
    table.add_column("names")
    for kind, names in registries.items():
        table.add_row(kind, ", ".join(names) or "(none)")
    _stdout.print(table)


@app.command("check")
@handle_errors
def check_cmd(
    everything: bool = typer.Option(
        False, "--all", help="Every encoder x fusion combination (default: the config's encoders)."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="Experiment TOML for the base model."
    ),
    mode: str = typer.Option("hooks", "--mode", help="Opacus grad_sample_mode: hooks or ghost."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Opacus ModuleValidator (strict) and one DP-SGD step per combination, with all heads."""
    from veilfed.config import ModelSection, load_config
    from veilfed.model.check import run_checks
    from veilfed.train import GRAD_SAMPLE_MODES

    if mode not in GRAD_SAMPLE_MODES:
        from veilfed.errors import UsageError

        raise UsageError(f"--mode {mode!r}; valid: {', '.join(GRAD_SAMPLE_MODES)}")
    base = load_config(config).model if config is not None else ModelSection()
    with console.status("checking model combinations"):
        results = run_checks(base, everything, mode)
    failed = [r for r in results if not r.ok]
    if as_json:
        print_json([r.__dict__ for r in results])
    else:
        table = Table(title=f"model check ({mode})")
        for col in ("combination", "result", "params"):
            table.add_column(col)
        for r in results:
            table.add_row(r.name, "ok" if r.ok else f"FAIL {r.error}", f"{r.params:,}")
        _stdout.print(table)
    if failed:
        names = ", ".join(r.name for r in failed)
        raise CheckFailed(
            f"model check: {len(failed)} of {len(results)} failed: {names} "
            f"(first: {failed[0].error})"
        )


@app.command("export")
@handle_errors
def export_cmd(
    model: str = typer.Argument(
        ..., help="A models:/ or runs:/ URI, an MLflow run id (its final model) or a directory."
    ),
    fmt: str = typer.Option("onnx", "--format", help="onnx, torchscript or pt2."),
    out: Path = typer.Option(..., "--out", help="The file to write (and FILE.json beside it)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
    as_json: bool = typer.Option(False, "--json", help="Print the export's metadata as JSON."),
) -> None:
    """Export a trained model for serving; kept only if every output matches the eager model
    to 1e-4 on a fixed clip."""
    from veilfed.inference import model_source
    from veilfed.inference.export import export
    from veilfed.model.saved import load_with_input

    net, world = load_with_input(model_source(model))
    with console.status(f"exporting to {fmt}"):
        meta = export(net, world, fmt, out, force)
    if as_json:
        print_json(meta)
        return
    worst = max(meta["max_abs_diff"].values(), default=0.0)
    _stdout.print(f"wrote {out} ({fmt}, {len(meta['outputs'])} outputs, max |diff| {worst:.1e})")
    if meta["left_out"]:
        _stdout.print(f"left out (generative, run eagerly): {', '.join(meta['left_out'])}")
