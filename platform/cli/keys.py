"""``veilfed keys``: Fernet key files (mode 0600) and crash-safe store key rotation."""

from __future__ import annotations

from pathlib import Path

import typer

from veilfed.cli.common import handle_errors, print_json
from veilfed.crypto.keys import read_key_file, write_key_file
from veilfed.data.bundle import client_key
from veilfed.data.store_rotate import rotate_store
from veilfed.privacy.ids import check_client_id

app = typer.Typer(no_args_is_help=True)


@app.command("new")
@handle_errors
def new_cmd(
    out: Path = typer.Option(..., "--out", help="Key file to create (never overwritten)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Create a new Fernet key file readable only by you (mode 0600)."""
    key = write_key_file(out)
    if as_json:
        print_json({"out": str(out), "key_id": key.key_id})
    else:
        print(f"wrote key {key.key_id} to {out} (mode 0600); keep it secret and backed up")


@app.command("derive")
@handle_errors
def derive_cmd(
    key_file: Path = typer.Option(..., "--key-file", help="The data owner's store key."),
    client: str = typer.Option(..., "--client", help="Client id the key is for."),
    out: Path = typer.Option(..., "--out", help="Client key file to create (mode 0600)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Write the per-client key that `data export` uses by default; hand it to that node only."""
    check_client_id(client)
    key = write_key_file(out, client_key(read_key_file(key_file), client))
    if as_json:
        print_json({"out": str(out), "client": client, "key_id": key.key_id})
    else:
        print(f"wrote client {client}'s key {key.key_id} to {out} (mode 0600)")


@app.command("rotate")
@handle_errors
def rotate_cmd(
    store: Path = typer.Option(..., "--store", help="Encrypted store directory."),
    key_file: Path = typer.Option(..., "--key-file", help="The store's current key."),
    new_key_file: Path = typer.Option(..., "--new-key-file", help="Key to re-encrypt under."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Re-encrypt a store under a new key; a crash leaves it wholly under the old or new key.

    Holds the store's writer lock throughout (a concurrent ingest waits, or this one does).
    """
    old, new = read_key_file(key_file), read_key_file(new_key_file)
    n = rotate_store(store, old, new)
    if as_json:
        print_json({"store": str(store), "clips": n, "key_id": new.key_id})
    else:
        print(
            f"{store}: {n} clips re-encrypted under key {new.key_id}; the old key no longer "
            "opens it"
        )
