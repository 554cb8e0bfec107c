"""``veilfed node start``: a SuperNode with the veilfed ClientApp on its encrypted shard."""

from __future__ import annotations

from pathlib import Path

import typer

from veilfed.cli.common import handle_errors

app = typer.Typer(no_args_is_help=True)


@app.command("start")
@handle_errors
def start_cmd(
    superlink: str = typer.Option(..., "--superlink", help="HOST:PORT of the coordinator."),
    shard: Path = typer.Option(..., "--shard", help="This node's shard bundle (data export)."),
    key_file: Path = typer.Option(..., "--key-file", help="The key that opens the shard."),
    certs: Path = typer.Option(..., "--certs", help="Directory with the deployment's ca.pem."),
    auth_key: Path = typer.Option(..., "--auth-key", help="This node's private auth key."),
    he_context: Path | None = typer.Option(
        None, "--he-context", help="CKKS secret context (he keygen) for secure aggregation."
    ),
    budget: float = typer.Option(
        0.0,
        "--budget",
        help="Most epsilon this node spends in one run; it declines rounds beyond (0: the run's).",
    ),
    state: Path = typer.Option(
        Path("node-state"), "--state", help="Node-local state: accountant, signing key, Flower."
    ),
    port: int = typer.Option(9094, "--port", help="Local port of the SuperNode's Runtime API."),
    connect_tries: int = typer.Option(
        5, "--connect-tries", help="Attempts to reach the SuperLink (back-off 0.5s, 1s, 2s...)."
    ),
    verbose: bool = typer.Option(False, "--verbose", help="Debug logging."),
) -> None:
    """Join the federation; train and evaluate when the coordinator asks. SIGTERM stops it."""
    from veilfed.deploy.node import NodeOptions, start
    from veilfed.deploy.process import setup_logging

    setup_logging(verbose)
    opts = NodeOptions(
        superlink=superlink,
        shard=shard,
        key_file=key_file,
        certs=certs,
        auth_key=auth_key,
        state=state,
        he_context=he_context,
        budget=budget,
        port=port,
        connect_tries=max(1, connect_tries),
    )
    raise typer.Exit(start(opts))
