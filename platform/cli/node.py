"""``veilfed node start``: a SuperNode with the veilfed ClientApp on its encrypted shard;
``veilfed node export-model``: a key holder decrypts an HE run's model and logs it."""

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
    certs: Path = typer.Option(
        ...,
        "--certs",
        help="Directory with the deployment's ca.pem (and trusted-entities.yaml, by default).",
    ),
    auth_key: Path = typer.Option(..., "--auth-key", help="This node's private auth key."),
    he_context: Path | None = typer.Option(
        None, "--he-context", help="CKKS secret context (he keygen) for secure aggregation."
    ),
    trusted_entities: Path | None = typer.Option(
        None,
        "--trusted-entities",
        help="App-signing keys whose bundles this node runs (certs new's trusted-entities.yaml; "
        "default: the one in --certs). Unsigned or foreign bundles are refused.",
    ),
    budget: float | None = typer.Option(
        None,
        "--budget",
        help="Most epsilon this shard spends over every run this node joins; it declines rounds "
        "beyond. Required unless the node trains only without DP (--allow-no-dp).",
    ),
    max_delta: float = typer.Option(
        0.0,
        "--max-delta",
        help="Largest delta this node accepts (always also below 1/n); its spending is "
        "accounted at this delta (default: the delta of its first DP run).",
    ),
    accountants: str = typer.Option(
        "rdp,prv", "--accountants", help="Accountants this node accepts: rdp, prv (never gdp)."
    ),
    allow_no_dp: bool = typer.Option(
        False, "--allow-no-dp", help="Train in runs without client DP (epsilon inf)."
    ),
    share_eval_metrics: bool = typer.Option(
        False,
        "--share-eval-metrics",
        help="The held-out clips are evaluable: send the global model's metrics on them (no DP). "
        "Default: decline evaluation; the training loss never leaves the node.",
    ),
    he_min_contributors: int = typer.Option(
        3,
        "--he-min-contributors",
        min=1,
        help="Refuse to decrypt an HE aggregate of fewer distinct clients (whatever the run says).",
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
    from veilfed.clients.policy import NodePolicy, parse_accountants
    from veilfed.launch.process import setup_logging
    from veilfed.launch.start_node import NodeOptions, start

    setup_logging(verbose)
    opts = NodeOptions(
        superlink=superlink,
        shard=shard,
        key_file=key_file,
        certs=certs,
        auth_key=auth_key,
        state=state,
        he_context=he_context,
        trusted_entities=trusted_entities,
        policy=NodePolicy(budget, max_delta, parse_accountants(accountants), allow_no_dp),
        share_eval_metrics=share_eval_metrics,
        he_min_contributors=he_min_contributors,
        port=port,
        connect_tries=max(1, connect_tries),
    )
    raise typer.Exit(start(opts))


@app.command("export-model")
@handle_errors
def export_model_cmd(
    run_dir: Path = typer.Option(
        ...,
        "--run-dir",
        help="The HE run's directory, or a copy of its settings.json and model-encrypted/.",
    ),
    he_context: Path = typer.Option(
        ..., "--he-context", help="The clients' CKKS secret context (he keygen's secret.ctx)."
    ),
    he_min_contributors: int = typer.Option(
        3,
        "--he-min-contributors",
        min=1,
        help="Refuse to decrypt an aggregate of fewer distinct clients (as in every round).",
    ),
    tracking_uri: str | None = typer.Option(
        None, "--tracking-uri", help="MLflow store to log to (default: the run's own)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the model URIs as JSON."),
) -> None:
    """Decrypt an HE run's final and best model as a key holder; log them to its MLflow run."""
    from veilfed.cli.common import print_json
    from veilfed.clients.export import export_model

    uris = export_model(run_dir, he_context, he_min_contributors, tracking_uri)
    if as_json:
        print_json(uris)
    else:
        for which in ("final", "best"):
            typer.echo(f"{which} model: {uris[which]}")
