"""Shared CLI plumbing: one-line errors with the contract's exit codes, JSON output, progress."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from veilfed.errors import VeilfedError
from veilfed.io import write_text_atomic

F = TypeVar("F", bound=Callable[..., Any])

console = Console(stderr=True)
# The MODEL argument of every command that uses a trained model (veilfed.inference.model_source).
MODEL_HELP = "A models:/ or runs:/ URI, an MLflow run id (its final model) or a directory."
DEVICE_HELP = "auto (CUDA when torch sees a GPU, else the CPU), cpu or cuda."


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error to stderr and return the Exit to raise."""
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


def handle_errors(func: F) -> F:
    """Turn VeilfedError into a one-line message and its exit code (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except VeilfedError as exc:
            raise fail(str(exc), exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def emit_summary(
    summary: dict[str, Any],
    summary_json: Path | None,
    force: bool,
    as_json: bool,
    show: Callable[[dict[str, Any]], None],
) -> None:
    """A run's summary: written to ``--summary-json`` (atomically; replacing a file only with
    ``--force``), then printed as JSON (``--json``) or as the command's human report."""
    if summary_json is not None:
        text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
        write_text_atomic(summary_json, text, overwrite=force, flag="--summary-json")
    if as_json:
        print_json(summary)
    else:
        show(summary)


def progress() -> Progress:
    """A Rich progress bar on stderr (stdout stays clean for --json)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # no stray output in pipes, CI and --json
    )
