"""``veilfed simulate``: the federated DP simulation on Flower's simulation engine (Ray).

The run is prepared (or reopened) here with :mod:`veilfed.coordinator.prepare`, so bad input is
one line before anything starts; the engine (:mod:`veilfed.launch.simulation`) then runs veilfed's
one ServerApp, which runs the rounds and finishes the run (summary, MLflow FINISHED); this module
prints the report (:mod:`veilfed.cli.report`) from the summary it wrote.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import typer

from veilfed.cli.common import DEVICE_HELP, emit_summary, handle_errors
from veilfed.errors import UsageError
from veilfed.federation.rundir import RUNS_DIR
from veilfed.io import check_new_output


def register(app: typer.Typer) -> None:
    app.command("simulate", help="Federated DP simulation on Ray (Flower simulation engine).")(
        simulate
    )


@handle_errors
def simulate(
    config: Path = typer.Option(..., "--config", help="Experiment TOML (experiments/*.toml)."),
    clients: int | None = typer.Option(None, "--clients", help="Number of virtual clients."),
    rounds: int | None = typer.Option(None, "--rounds", help="Federated rounds."),
    fraction: float | None = typer.Option(None, "--fraction", help="Clients sampled per round."),
    epsilon: float | None = typer.Option(
        None, "--epsilon", help="Per-client target ε over all rounds ('inf': no DP)."
    ),
    delta: float | None = typer.Option(None, "--delta", help="δ of the per-client guarantee."),
    resume: str | None = typer.Option(None, "--resume", help="Continue this run id."),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Attach to a running Ray cluster (host:port)."
    ),
    store: Path | None = typer.Option(
        None, "--store", help="Encrypted store (default: synthesize the config's world)."
    ),
    key_file: Path | None = typer.Option(None, "--key-file", help="Fernet key of --store."),
    he: bool = typer.Option(
        False, "--he", help="CKKS secure aggregation: the coordinator only sums ciphertexts."
    ),
    he_dir: Path | None = typer.Option(
        None, "--he-dir", help="Keys from `veilfed he keygen` (default: new keys in the run dir)."
    ),
    runs_dir: Path = typer.Option(Path(RUNS_DIR), "--runs-dir", help="Where run state lives."),
    summary_json: Path | None = typer.Option(None, "--summary-json", help="Write summary here."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --summary-json."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    init_from: str | None = typer.Option(
        None,
        "--init-from",
        help="Initial global model: a veilfed state dict (.pt) or torchvision's r2plus1d_18 "
        "state dict.",
    ),
    register: str | None = typer.Option(
        None,
        "--register",
        help="Register the best model in MLflow's registry under this name (champion / "
        "challenger by the held-out selection metric).",
    ),
    device: str | None = typer.Option(
        None,
        "--device",
        help=DEVICE_HELP + " Where virtual clients train; a GPU needs --gpus-per-client.",
    ),
    gpus_per_client: float | None = typer.Option(
        None, "--gpus-per-client", help="Ray's share of a GPU for each virtual client (0: CPU)."
    ),
) -> None:
    """Run (or resume) a federated simulation and print per-task metrics and per-client ε."""
    if summary_json is not None:
        inputs = (config, store, key_file, he_dir)
        check_new_output(summary_json, force, "--summary-json", inputs)
    if ray_address:
        check_ray_address(ray_address)
    if device is not None:
        from veilfed.devices import check_device

        check_device(device)
    from veilfed.cli.report import print_models, print_report
    from veilfed.coordinator import prepare as lifecycle
    from veilfed.launch import simulation as engine

    if resume:
        given = [
            f
            for f, v in (
                ("--clients", clients),
                ("--rounds", rounds),
                ("--fraction", fraction),
                ("--epsilon", epsilon),
                ("--delta", delta),
                ("--store", store),
                ("--he", he or None),
                ("--he-dir", he_dir),
                ("--init-from", init_from),
                ("--device", device),
                ("--gpus-per-client", gpus_per_client),
            )
            if v is not None
        ]
        if given:
            raise UsageError(
                f"--resume continues with the run's own settings; drop {', '.join(given)}"
            )
        settings, tracker = lifecycle.reopen(runs_dir, resume)
    else:
        overrides = {
            k: v
            for k, v in (
                ("clients", clients),
                ("rounds", rounds),
                ("fraction", fraction),
                ("gpus_per_client", gpus_per_client),
            )
            if v is not None
        }
        settings, tracker = lifecycle.prepare(
            config,
            overrides,
            epsilon,
            delta,
            store,
            key_file,
            runs_dir,
            he=he,
            he_dir=he_dir,
            init=init_from,
            device=device,
        )
    with tracker.failing_on_error():
        summary = engine.run_engine(settings, ray_address)
    if settings.he.enabled:
        summary["model"] |= export_as_first_client(settings)
    if register:
        from veilfed.federation.weights import experiment
        from veilfed.model.registered import register as register_model

        specs = experiment(settings).model.task_specs()
        summary["registry"] = register_model(summary, register, specs)
    emit_summary(summary, summary_json, force, json_out, print_report)
    if not json_out:
        print_models(summary.get("model") or {}, "round", summary.get("registry"))


def export_as_first_client(settings: Any) -> dict[str, Any]:
    """Under HE the coordinator logged no plaintext model: the first client, a key holder,
    decrypts the final and best aggregate and logs them (``veilfed.clients.export``). In a
    simulation every party is this machine, so the step runs here, after the run; on real
    nodes a key holder runs ``veilfed node export-model``."""
    from veilfed.clients.export import export_model
    from veilfed.data.partition import client_name

    uris = export_model(settings.run_dir, settings.he.secret_path)
    return {**uris, "exported_by": client_name(0)}


def check_ray_address(address: str) -> None:
    """Fail fast (exit 2) when nothing listens at ``host:port`` instead of hanging in ray.init."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray-address {address!r}: expected host:port (e.g. 127.0.0.1:6379)")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as exc:
        raise UsageError(
            f"--ray-address {address}: no Ray cluster answers ({exc.strerror or exc}); start one "
            "with 'ray start --head' or drop --ray-address"
        ) from None
