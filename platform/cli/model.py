"""``veilfed model``: list the registries; check every model combination against Opacus."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from veilfed.cli.common import MODEL_HELP, console, handle_errors, print_json
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
    model: str = typer.Argument(..., help=MODEL_HELP),
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


@app.command("compress")
@handle_errors
def compress_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    method: str = typer.Option(
        "int8",
        "--method",
        help="int8 (onnxruntime dynamic int8 of the ONNX export), prune (whole channels of the "
        "internal widths removed, then fine-tuned to match this model) or distill (a narrower "
        "model trained on the config's training clips to match this one).",
    ),
    config: Path = typer.Option(
        ..., "--config", help="The experiment the model was trained with: its data and tasks."
    ),
    store: Path | None = typer.Option(None, "--store", help="Held-out clips of this store."),
    key_file: Path | None = typer.Option(None, "--key-file", help="Fernet key of --store."),
    out: Path = typer.Option(..., "--out", help="New folder for the compressed model and report."),
    student_dim: int | None = typer.Option(
        None, "--student-dim", help="distill: the student's [model] dim (default: half)."
    ),
    keep: float = typer.Option(
        0.5, "--keep", help="prune: the fraction of each prunable width's channels to keep."
    ),
    epochs: int = typer.Option(5, "--epochs", min=1, help="distill, prune: passes over the clips."),
    register: str | None = typer.Option(
        None,
        "--register",
        help="distill, prune: register the new model under this name (champion only as its first "
        "version: its test-clip value is not compared with trained versions').",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Compress a trained model and report held-out metrics before and after (beside the
    baseline), size and CPU latency, measured side by side; logged as an MLflow run."""
    import json

    from veilfed import tracking
    from veilfed.errors import UsageError
    from veilfed.inference.distill import distill_model, student_config
    from veilfed.inference.heldout import held_out, load_model
    from veilfed.inference.prune import check_keep, prune_model
    from veilfed.inference.quantize import compress_int8
    from veilfed.io import write_text_atomic
    from veilfed.model import saved

    if method not in ("int8", "prune", "distill"):
        raise UsageError(f"--method {method!r}; valid: int8, prune, distill")
    if method == "int8" and (register or student_dim is not None):
        raise UsageError(
            "--register and --student-dim are distill's: int8 writes ONNX files for "
            "`predict MODEL --onnx FILE`, not a new model"
        )
    if method == "prune" and student_dim is not None:
        raise UsageError("--student-dim is distill's; prune takes --keep")
    check_keep(keep)
    if out.exists():
        raise UsageError(f"{out}: already exists; give --out a new folder")
    cfg, net, world = load_model(model, config)
    with console.status("reading the held-out clips"):
        clips = held_out(cfg, net, store, key_file)
    student = None
    if method == "int8":
        with console.status("exporting, quantizing and measuring"):
            report = compress_int8(
                net, world, clips.test, clips.baselines, out, seed=cfg.train.seed
            )
    elif method == "prune":
        with console.status(f"pruning to {keep:.0%} of each width, fine-tuning, measuring"):
            student, student_cfg, report = prune_model(net, cfg, keep, clips, epochs)
        report["files"] = {"model": str(saved.save_dir(out / "model", student, student_cfg))}
    else:
        dim = student_dim if student_dim is not None else cfg.model.dim // 2
        student_config(cfg, dim)  # a width that cannot be built is one line before training
        with console.status(f"distilling into dim {dim} ({epochs} epochs) and measuring"):
            student, student_cfg, report = distill_model(net, cfg, dim, clips, epochs)
        report["files"] = {"model": str(saved.save_dir(out / "model", student, student_cfg))}
    report["source_model"] = model
    write_text_atomic(out / "report.json", json.dumps(report, indent=1) + "\n", overwrite=False)
    tracker = tracking.start_run(
        cfg.tracking.experiment or cfg.name,
        params={
            "compress": {"method": method, "source_model": model}
            | ({"keep": keep} if method == "prune" else {})
        },
        run_name=f"compress-{cfg.name}",
        tags={"veilfed.kind": "compress"},
    )
    if student is not None:
        report["model"] = saved.log_model(tracker, student, student_cfg, saved.FINAL_MODEL)
    metrics = {f"latency_p50_ms/{k}": v for k, v in report["latency_p50_ms"].items()}
    metrics |= {f"bytes/{k}": float(v) for k, v in report["bytes"].items()}
    for task, row in report["tasks"].items():
        for key in ("before", "after", "baseline"):
            if row[key] is not None:
                metrics[f"{key}/{task}/{row['metric']}"] = row[key]
    tracker.log_metrics(metrics, step=0)
    tracker.client.log_artifacts(tracker.run_id, str(out), "compressed")
    tracker.finish()
    report["run_id"] = tracker.run_id
    if register and student is not None:
        from veilfed.model.registered import register as register_model

        entry = {"model": {"final": report["model"]}, "run_id": tracker.run_id}
        report["registry"] = register_model(entry, register, net.task_specs)
    if as_json:
        print_json(report)
        return
    _show_compression(report)


def _show_compression(report: dict) -> None:
    new = {"int8": "int8", "prune": "pruned"}.get(report["method"], "student")
    table = Table(title=f"{new} vs the trained model (held-out clips; run {report['run_id']})")
    for col in ("task", "metric", "before", new, "baseline", f"{new} margin (95 % CI)"):
        table.add_column(col)
    for task, r in report["tasks"].items():
        ci = r["margin_ci95_after"]
        margin = "-" if r["margin_after"] is None else f"{r['margin_after']:+.3f}"
        margin += f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""
        before, after, base = (
            "-" if r[k] is None else f"{r[k]:.3f}" for k in ("before", "after", "baseline")
        )
        table.add_row(task, r["metric"], before, after, base, margin)
    _stdout.print(table)
    b, lat = report["bytes"], report["latency_p50_ms"]
    if report["method"] in ("distill", "prune"):
        p = report["params"]
        if report["method"] == "distill":
            what = f"dim {report['dim']['teacher']} -> {report['dim']['student']}"
        else:
            what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in report["widths"].items())
        _stdout.print(
            f"{what}: {p['teacher']:,} -> {p['student']:,} params, "
            f"{b['teacher'] / 2**20:.2f} -> {b['student'] / 2**20:.2f} MB; p50 per window "
            f"{lat['teacher']:.2f} -> {lat['student']:.2f} ms "
            f"({report['speedup_student_vs_teacher']}x faster)"
        )
        _stdout.print(f"model: {report['model']} (also {report['files']['model']})")
        if "registry" in report:
            r = report["registry"]
            _stdout.print(f"registered: models:/{r['name']}/{r['version']} ({r['alias']})")
        return
    _stdout.print(
        f"ONNX {b['onnx_fp32'] / 2**20:.2f} MB -> int8 {b['onnx_int8'] / 2**20:.2f} MB; "
        f"p50 per window: eager {lat['eager']:.2f} ms, fp32 {lat['onnx_fp32']:.2f} ms, "
        f"int8 {lat['onnx_int8']:.2f} ms ({report['speedup_int8_vs_eager']}x eager)"
    )
    _stdout.print(f"files: {report['files']['int8']} (veilfed predict MODEL --onnx FILE)")
