"""``veilfed predict MODEL SOURCE...``: a trained model's results on videos (or store clips).

Each source is predicted on its own: a bad one (not a video, truncated, no frames) is reported
on stderr as one line naming it and the others go on; the exit code is then 1 (2 when the call
itself is wrong: an unknown model, task or flag). ``--json`` prints one JSON object per source
on its own line (docs/inference.md); otherwise a table per source on stdout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from veilfed.cli.common import DEVICE_HELP, MODEL_HELP, fail, handle_errors

_stdout = Console()


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_cmd)


@handle_errors
def predict_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    sources: list[str] = typer.Argument(
        ..., help="Video files (any container PyAV opens), or clip ids with --store."
    ),
    tasks: list[str] = typer.Option(
        [], "--tasks", help="Only these tasks (repeatable; default: all the model's)."
    ),
    question: list[str] = typer.Option(
        [], "--question", help="A question for the model's qa task (repeatable)."
    ),
    stride: float | None = typer.Option(
        None, "--stride", help="Seconds between window starts (default: one clip span)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Write overlays (PNG), restored / next frames and summaries (MP4)."
    ),
    runtime: str = typer.Option(
        "torch", "--runtime", help="torch (eager) or onnxruntime (the model exported to ONNX)."
    ),
    onnx: Path | None = typer.Option(
        None, "--onnx", help="Run this exported ONNX file of MODEL (e.g. its int8 compression)."
    ),
    store: Path | None = typer.Option(None, "--store", help="SOURCEs are clip ids of this store."),
    key_file: Path | None = typer.Option(None, "--key-file", help="Fernet key of --store."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per source per line."),
    live: bool = typer.Option(
        False,
        "--stream",
        help="SOURCE is live (a file played at its own rate, a URL or device): one JSON line per "
        "window with its latency as it plays, then a summary line.",
    ),
    max_windows: int | None = typer.Option(
        None, "--max-windows", min=1, help="With --stream: stop after this many windows."
    ),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """Run a trained model on videos: per-window and per-video results for each task."""
    from veilfed.crypto.keys import read_key_file
    from veilfed.data.store import EncryptedStore
    from veilfed.data.video import VideoError
    from veilfed.errors import UsageError
    from veilfed.inference import Predictor, model_source, read_file, store_input
    from veilfed.model.saved import load_with_input

    if (store is None) != (key_file is None):
        raise UsageError("--store and --key-file go together: give both or neither")
    if store is not None and out is not None:
        raise UsageError(
            "--out writes frames of the video in the clear; store clips stay in memory, so "
            "drop --out (or predict on a file you may keep in the clear)"
        )
    opened = EncryptedStore.open(store, read_key_file(key_file)) if store and key_file else None
    net, world = load_with_input(model_source(model))
    predictor = Predictor(net, world, tasks, question, stride, out, runtime, onnx, device)
    if live:
        _stream(predictor, sources, max_windows)
        return
    failed = 0
    for name in sources:
        try:
            item = store_input(opened, name) if opened is not None else read_file(name)
            result = predictor.run(item)
        except (UsageError, VideoError) as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            continue
        if as_json:
            print(json.dumps(result, sort_keys=True))
        else:
            _show(result)
    if failed:
        raise fail(f"{failed} of {len(sources)} sources could not be predicted", 1)


def _stream(predictor: object, sources: list[str], max_windows: int | None) -> None:
    """``--stream``: JSON lines as the source plays; a source that breaks off is exit 1."""
    from veilfed.data.video import VideoError
    from veilfed.errors import UsageError
    from veilfed.inference.stream import stream, summary

    if len(sources) != 1:
        raise UsageError(f"--stream takes one SOURCE, got {len(sources)}")
    results: list[dict] = []
    try:
        for result in stream(predictor, sources[0], max_windows=max_windows):
            results.append(result)
            print(json.dumps(result, sort_keys=True), flush=True)
    except VideoError as exc:
        print(json.dumps({"summary": summary(results, predictor.world.clip_seconds)}))
        raise fail(str(exc), 1) from None
    print(json.dumps({"summary": summary(results, predictor.world.clip_seconds)}), flush=True)


def _show(result: dict) -> None:
    table = Table(title=f"{result['source']} ({result['duration_s']} s)")
    for col in ("task", "window", "result"):
        table.add_column(col)
    for task, value in result["video"].items():
        table.add_row(task, "video", _brief(value))
    for window in result["windows"]:
        span = f"{window['index']} [{window['start']}, {window['end']})"
        for task, value in window["tasks"].items():
            table.add_row(task, span, _brief(value))
    _stdout.print(table)
    for path in result["files"]:
        _stdout.print(f"wrote {path}")


def _brief(value: dict) -> str:
    """A one-line summary of one task's result."""
    if "class" in value:
        return f"{value['class']} ({value['probability']:.2f})"
    if "flag" in value:
        return f"{'yes' if value['flag'] else 'no'} ({value['probability']:.2f})"
    if "labels" in value:
        return ", ".join(value["labels"]) or "(none)"
    if "value" in value:
        return f"{value['value']:.3f}"
    if "text" in value:
        return repr(value["text"])
    if "answers" in value:
        return "; ".join(f"{a['question']} -> {a['answer']}" for a in value["answers"]) or "-"
    if "keyframes" in value:
        return "keyframes at " + ", ".join(f"{t:.2f}s" for t in value["keyframes"])
    if "frames" in value and isinstance(value["frames"], list):
        return f"{len(value['frames'])} frames"
    return json.dumps(value)[:60]
