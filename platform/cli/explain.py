"""``veilfed explain MODEL SOURCE --task T``: why the model decided what it did on one window.

Runs where the clip is (a data owner, a node): a file, or a clip id of an encrypted store
decrypted in memory. Prints the explanation (docs/explain.md) as a table, or as one JSON object
with ``--json``; ``--out DIR`` writes heat-map frames, an MP4, bar charts and one
self-contained HTML page.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from veilfed.cli.common import MODEL_HELP, handle_errors

_stdout = Console()


def register(app: typer.Typer) -> None:
    app.command("explain")(explain_cmd)


@handle_errors
def explain_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    source: str = typer.Argument(..., help="A video file, or a clip id with --store."),
    task: str = typer.Option(..., "--task", help="The task whose decision to explain."),
    label: str | None = typer.Option(
        None, "--class", help="Explain this class (default: the predicted one)."
    ),
    method: str = typer.Option(
        "integrated_gradients",
        "--method",
        help="integrated_gradients, occlusion, or attention (attention fusions only).",
    ),
    window: int = typer.Option(0, "--window", help="Which window of the video (0: the first)."),
    steps: int = typer.Option(24, "--steps", help="Integrated-gradients steps."),
    out: Path | None = typer.Option(
        None, "--out", help="Write frames.png, overlay.mp4, modalities.png and report.html here."
    ),
    store: Path | None = typer.Option(None, "--store", help="SOURCE is a clip id of this store."),
    key_file: Path | None = typer.Option(None, "--key-file", help="Fernet key of --store."),
    as_json: bool = typer.Option(False, "--json", help="Print the explanation as JSON."),
) -> None:
    """Attribute a decision to frames, regions, audio time-frequency bins, tokens and
    modalities (captum; modality ablation through the missing-modality mask)."""
    from veilfed.crypto.keys import read_key_file
    from veilfed.data.store import EncryptedStore
    from veilfed.data.video import VideoError
    from veilfed.errors import UsageError
    from veilfed.explain import explain_window
    from veilfed.inference import model_source, read_file, store_input
    from veilfed.model.saved import load_with_input

    if (store is None) != (key_file is None):
        raise UsageError("--store and --key-file go together: give both or neither")
    if store is not None and out is not None:
        raise UsageError(
            "--out writes frames of the clip in the clear; store clips stay in memory, so "
            "drop --out (or explain a file you may keep in the clear)"
        )
    net, world = load_with_input(model_source(model))
    try:
        if store is not None and key_file is not None:
            item = store_input(EncryptedStore.open(store, read_key_file(key_file)), source)
        else:
            item = read_file(source)
        result = explain_window(net, world, item, task, label, method, window, steps, out)
    except VideoError as exc:
        raise UsageError(str(exc)) from None
    if as_json:
        print(json.dumps(result, sort_keys=True))
        return
    _show(result)


def _show(result: dict) -> None:
    _stdout.print(
        f"{result['source']} window {result['window']} [{result['start']}, {result['end']}) s: "
        f"{result['task']} = {result['class']} ({result['confidence']:.3f}), {result['method']}"
    )
    table = Table(title="modality ablation (confidence without it)")
    for col in ("modality", "without", "drop"):
        table.add_column(col)
    ab = result["ablation"]
    for m, v in ab["without"].items():
        table.add_row(m, f"{v:.3f}", f"{ab['drop'][m]:+.3f}")
    _stdout.print(table)
    _stdout.print(f"decided by: {ab['decided'] or 'no single modality'}")
    if "video" in result:
        shares = result["video"]["frame_share"]
        top = max(range(len(shares)), key=shares.__getitem__)
        _stdout.print(f"video: frame {top} holds {shares[top]:.0%} of the attribution")
    if "text" in result and result["text"]["tokens"]:
        best = max(result["text"]["tokens"], key=lambda t: t["share"])
        _stdout.print(f"text: {best['token']!r} holds {best['share']:.0%} of it")
    for path in result["files"]:
        _stdout.print(f"wrote {path}")
