"""``veilfed data``: synthetic world, ingestion, encrypted store and shard bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from veilfed.cli.common import fail, handle_errors, print_json, progress
from veilfed.config import load_config
from veilfed.crypto.keys import read_key_file
from veilfed.data import synth
from veilfed.data.bundle import export_bundle, import_bundle, partition_ids, read_clip_list
from veilfed.data.example_videos import write_example
from veilfed.data.files import encode_clip, write_world
from veilfed.data.ingest import WindowPlan, ingest_to
from veilfed.data.labels import LabelSource
from veilfed.data.store import EncryptedStore
from veilfed.io import check_new_output
from veilfed.privacy.ids import check_client_id

app = typer.Typer(no_args_is_help=True)


@app.command("synth")
@handle_errors
def synth_cmd(
    clips: int = typer.Option(64, "--clips", min=1, help="Number of clips."),
    out: Path | None = typer.Option(None, "--out", help="New directory: MP4 + JSON sidecars."),
    store: Path | None = typer.Option(None, "--store", help="Encrypted store to write instead."),
    key_file: Path | None = typer.Option(None, "--key-file", help="Fernet key of the store."),
    seed: int = typer.Option(0, "--seed", min=0, help="World seed (>= 0)."),
    frames: int = typer.Option(synth.WorldConfig.frames, "--frames"),
    size: int = typer.Option(synth.WorldConfig.height, "--size", help="Frame height and width."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Generate a synthetic world as real MP4 files, or straight into an encrypted store."""
    if (out is None) == (store is None):
        raise fail("give exactly one of --out DIR (plain files) or --store DIR (encrypted)")
    if store is not None and key_file is None:
        raise fail("--store needs --key-file K (create one with 'veilfed keys new --out K')")
    cfg = synth.WorldConfig(frames=frames, height=size, width=size, seed=seed)
    with progress() as bar:
        task = bar.add_task("synthesizing", total=clips)

        def advance(done: int) -> None:
            bar.update(task, completed=done)

        if out is not None:
            manifest = write_world(cfg, clips, out, on_clip=advance)
            with_audio = sum(c["has_audio"] for c in manifest["clips"])
            total = sum(c["bytes"] for c in manifest["clips"])
            target = str(out)
        else:
            enc = EncryptedStore.create(store, read_key_file(key_file))
            with_audio = total = 0
            with enc.batch():  # MP4 bytes go from memory straight into Fernet tokens
                for i, clip in enumerate(synth.iter_world(cfg, clips), 1):
                    data = encode_clip(clip)
                    enc.put(clip.clip_id, data, clip.labels)
                    with_audio += clip.audio is not None
                    total += len(data)
                    advance(i)
            target = str(store)
    summary = {
        "clips": clips,
        "with_audio": with_audio,
        "bytes": total,
        "out": target,
        "encrypted": store is not None,
        "world": cfg.to_dict(),
    }
    if as_json:
        print_json(summary)
    else:
        kind = "encrypted store" if store is not None else "MP4 + sidecars"
        print(
            f"wrote {clips} clips ({with_audio} with audio, {total / 1e6:.1f} MB) to "
            f"{target} as {kind}; world {frames}x{size}x{size}, seed {seed}"
        )


@app.command("example")
@handle_errors
def example_cmd(
    out: Path = typer.Option(..., "--out", help="New directory for the example videos."),
    per_scene: int = typer.Option(10, "--per-scene", min=2, help="Clips of each scene."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Write example videos with labels.csv, COCO boxes.json and WebVTT subtitles, to try the
    own-videos walkthrough (README, "Your own videos")."""
    summary = write_example(out, per_scene)
    if as_json:
        print_json(summary)
    else:
        print(
            f"wrote {summary['videos']} MP4s to {out}/videos with labels.csv, boxes.json "
            f"({summary['annotated_frames']} annotated frames) and subtitles/"
        )


def _open_store(store: Path, key_file: Path) -> EncryptedStore:
    return EncryptedStore.open(store, read_key_file(key_file))


@app.command("ingest")
@handle_errors
def ingest_cmd(
    sources: list[Path] = typer.Argument(..., help="Video files or directories (searched deeply)."),
    store: Path = typer.Option(..., "--store", help="Encrypted store (created if missing)."),
    key_file: Path = typer.Option(..., "--key-file", help="Fernet key file of the store."),
    labels: list[str] = typer.Option(
        [],
        "--labels",
        help="[TASK=]FILE, repeatable: a per-file CSV/JSON table, COCO JSON, WebVTT/SRT "
        "(file or folder), QA or frame-score JSON (docs/data.md).",
    ),
    config: Path | None = typer.Option(
        None, "--config", help="Experiment TOML whose [model.tasks] the labels are checked against."
    ),
    window: float | None = typer.Option(
        None, "--window", help="Cut each file into windows of this many seconds."
    ),
    stride: float | None = typer.Option(
        None, "--stride", help="Seconds between window starts (default: --window)."
    ),
    scenes: str | None = typer.Option(
        None, "--scenes", help="MIN:MAX seconds: windows at scene cuts (PySceneDetect)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Encrypt real videos (MP4/MOV/MKV/WebM) and their labels into a store; exit 2 if no video
    was usable or a label or window is bad (then the store is as it was).

    Files whose content is already in the store are skipped (a rerun adds nothing and exits 0);
    a concurrent writer of the same store is waited for.
    """
    key = read_key_file(key_file)
    specs = load_config(config).model.task_specs() if config is not None else None
    plan = _window_plan(window, stride, scenes)
    label_sources = [LabelSource.parse(text) for text in labels] or None
    summary = ingest_to(store, key, sources, label_sources, specs, plan).to_json()
    if as_json:
        print_json(summary)
    else:
        for s in summary["skipped_files"]:
            print(f"skipped {s['file']}: {s['reason']}")
        print(f"ingested {summary['ingested']} videos into {store}, skipped {summary['skipped']}")
    if not summary["ingested"] and not summary["already_in_store"]:
        raise fail(f"{store}: no video was ingested; check the SRC paths and the skip reasons")


def _window_plan(window: float | None, stride: float | None, scenes: str | None) -> Any:
    if scenes is not None:
        if window is not None or stride is not None:
            raise fail("give --scenes MIN:MAX or --window/--stride, not both")
        lo, sep, hi = scenes.partition(":")
        try:
            bounds = (float(lo), float(hi))
        except ValueError:
            bounds = (0.0, -1.0)
        if not sep or not 0 < bounds[0] <= bounds[1]:
            raise fail(f"--scenes {scenes!r}: give MIN:MAX seconds with 0 < MIN <= MAX")
        return WindowPlan(scenes=bounds)
    if stride is not None and window is None:
        raise fail("--stride needs --window SECONDS")
    return WindowPlan(length=window, stride=stride) if window is not None else None


@app.command("verify")
@handle_errors
def verify_cmd(
    store: Path = typer.Option(..., "--store", help="Encrypted store directory."),
    key_file: Path = typer.Option(..., "--key-file", help="Fernet key file of the store."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Decrypt and check every clip; exit 1 naming the first bad clip and chunk."""
    n = _open_store(store, key_file).verify()
    if as_json:
        print_json({"store": str(store), "clips": n, "ok": True})
    else:
        print(f"{store}: {n} clips decrypt and are complete")


@app.command("export")
@handle_errors
def export_cmd(
    store: Path = typer.Option(..., "--store", help="Encrypted store directory."),
    key_file: Path = typer.Option(..., "--key-file", help="Fernet key file of the store."),
    client: str = typer.Option(..., "--client", help="Client id, e.g. client-0000."),
    out: Path = typer.Option(..., "--out", help="Bundle file to write (.vfs); never replaced."),
    client_key_file: Path | None = typer.Option(
        None, "--client-key-file", help="Client's key; default: derived (`veilfed keys derive`)."
    ),
    clips: Path | None = typer.Option(None, "--clips", help="File listing the clip ids to send."),
    num_clients: int | None = typer.Option(
        None, "--num-clients", min=1, help="Partition the store among N clients."
    ),
    scheme: str = typer.Option("iid", "--partition", help="iid, dirichlet or quantity."),
    alpha: float = typer.Option(0.5, "--alpha"),
    seed: int = typer.Option(0, "--seed", min=0),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Write one client's clips as a bundle encrypted under that client's key."""
    check_client_id(client)
    check_new_output(out, force, inputs=(store, key_file, client_key_file, clips))
    if clips is not None and num_clients is not None:
        raise fail("give at most one of --clips FILE and --num-clients N")
    enc = _open_store(store, key_file)
    ids = read_clip_list(clips) if clips is not None else None
    if num_clients is not None:
        ids = partition_ids(enc, client, num_clients, scheme, alpha, seed)
    key = read_key_file(client_key_file) if client_key_file is not None else None
    summary = export_bundle(enc, client, out, key, ids, overwrite=force)
    if as_json:
        print_json(summary)
    else:
        print(
            f"exported {summary['clips']} clips for {client} to {out} "
            f"(client key {summary['key_id']})"
        )


@app.command("import")
@handle_errors
def import_cmd(
    bundle: Path = typer.Argument(..., help="Bundle file from `veilfed data export`."),
    store: Path = typer.Option(..., "--store", help="Node store to create or add to."),
    key_file: Path = typer.Option(..., "--key-file", help="This client's key file."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Check a bundle and add its clips, still encrypted, to this node's store."""
    summary = import_bundle(bundle, store, read_key_file(key_file))
    if as_json:
        print_json(summary)
    else:
        print(f"imported {summary['clips']} clips for {summary['client']} into {store}")
