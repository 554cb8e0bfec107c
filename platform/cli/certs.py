"""``veilfed certs``: the CA, coordinator TLS certificate and node auth keys of a deployment."""

from __future__ import annotations

from pathlib import Path

import typer

from veilfed.cli.common import handle_errors, print_json

app = typer.Typer(no_args_is_help=True)


@app.command("new")
@handle_errors
def new_cmd(
    out: Path = typer.Option(..., "--out", help="Directory to write into (never overwritten)."),
    nodes: int = typer.Option(..., "--nodes", help="Number of node auth key pairs."),
    host: list[str] = typer.Option(
        [], "--host", help="Extra coordinator host name or IP for the TLS certificate (repeat)."
    ),
    days: float = typer.Option(365.0, "--days", help="Validity of the certificates in days."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Create a CA, the coordinator's TLS certificate, its app-signing key and one auth key pair
    per node."""
    from veilfed.crypto.certs import create_bundle

    bundle = create_bundle(out, nodes, host, days)
    summary = {
        "out": str(out),
        "ca": str(bundle.ca_cert),
        "server_cert": str(bundle.server_cert),
        "auth_keys": str(bundle.auth_keys),
        "nodes": {n: str(bundle.node_key(n)) for n in bundle.nodes},
        "app_signing_key": str(bundle.app_signing_key),
        "trusted_entities": str(bundle.trusted_entities),
        "not_after": bundle.not_after.isoformat(),
    }
    if as_json:
        print_json(summary)
        return
    print(f"wrote CA {bundle.ca_cert} and coordinator certificate {bundle.server_cert}")
    print(f"wrote {len(bundle.nodes)} node auth keys under {out}/nodes (mode 0600)")
    print(f"wrote app-signing key {bundle.app_signing_key} and {bundle.trusted_entities}")
    print(f"coordinator: --certs {out} --auth-keys {bundle.auth_keys}")
    print(
        "node i:      --certs DIR-with-ca.pem-and-trusted-entities.yaml "
        f"--auth-key {out}/nodes/<node>.key"
    )


@app.command("signing-key")
@handle_errors
def signing_key_cmd(
    out: Path = typer.Option(
        ...,
        "--out",
        help="Directory for app-signing.key and trusted-entities.yaml (never replaced).",
    ),
) -> None:
    """Only the app-signing key pair (certs new writes one): for a deployment made without it."""
    from veilfed.crypto.app_signing import APP_SIGNING_KEY, TRUSTED_ENTITIES, write_signing_key

    write_signing_key(out)
    print(f"wrote {out / APP_SIGNING_KEY} (coordinator, mode 0600) and {out / TRUSTED_ENTITIES}")
    print("give every node the trusted-entities.yaml (node start --certs or --trusted-entities)")
