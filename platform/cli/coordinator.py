"""``veilfed coordinator start``: the SuperLink and the veilfed ServerApp as a service."""

from __future__ import annotations

from pathlib import Path

import typer

from veilfed.cli.common import handle_errors

app = typer.Typer(no_args_is_help=True)


@app.command("start")
@handle_errors
def start_cmd(
    address: str = typer.Option(
        "0.0.0.0:9092",
        "--address",
        help="HOST:PORT nodes connect to: the Fleet API only (HTTPS, node authentication).",
    ),
    control_port: int = typer.Option(
        9093,
        "--control-port",
        help="Port of the Control and Runtime APIs, served on 127.0.0.1 only.",
    ),
    certs: Path = typer.Option(
        ..., "--certs", help="Directory with ca.pem, superlink.pem, superlink.key (certs new)."
    ),
    auth_keys: Path = typer.Option(
        ..., "--auth-keys", help="Directory of node public keys (*.pub); only these may join."
    ),
    app_signing_key: Path | None = typer.Option(
        None,
        "--app-signing-key",
        help="Key that signs the app bundle nodes run (default: --certs/app-signing.key).",
    ),
    config: Path = typer.Option(..., "--config", help="Experiment config (TOML)."),
    resume: str | None = typer.Option(None, "--resume", help="Continue this run (its id)."),
    he_context: Path | None = typer.Option(
        None,
        "--he-context",
        help="Public CKKS context (he keygen's public.ctx): secure aggregation on. Never the "
        "secret one.",
    ),
    state: Path = typer.Option(
        Path("coordinator-state"), "--state", help="SuperLink database, app and run files."
    ),
    wait_nodes: float = typer.Option(
        300.0, "--wait-nodes", help="Seconds to wait for every registered node to connect."
    ),
    serve: bool = typer.Option(
        False, "--serve", help="Keep serving after the run completes (containers, services)."
    ),
    verbose: bool = typer.Option(False, "--verbose", help="Debug logging."),
) -> None:
    """Run the SuperLink (TLS, node auth; Fleet API only on --address) and one signed veilfed
    run; exit when it finishes."""
    from veilfed.launch.process import setup_logging
    from veilfed.launch.start_coordinator import CoordinatorOptions, start

    setup_logging(verbose)
    opts = CoordinatorOptions(
        address=address,
        certs=certs,
        auth_keys=auth_keys,
        config=config,
        state=state,
        resume=resume,
        he_context=he_context,
        wait_nodes_s=wait_nodes,
        serve=serve,
        control_port=control_port,
        app_signing_key=app_signing_key,
    )
    raise typer.Exit(start(opts))
