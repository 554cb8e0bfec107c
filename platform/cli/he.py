"""`veilfed he`: CKKS key generation for secure aggregation, and inspecting context files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from veilfed.cli.common import handle_errors, print_json
from veilfed.crypto.he_keys import HEContext, keygen, load_context
from veilfed.crypto.he_params import HEParams
from veilfed.federation.sections import HEConfig

app = typer.Typer(no_args_is_help=True, add_completion=False)
# Defaults are the run's ([he] in a config): clients encrypt full weights × n_k, not deltas.
_RUN = HEConfig()


def _describe(ctx: HEContext) -> dict[str, Any]:
    p = ctx.params
    return {
        "key_id": ctx.key_id,
        "kind": "secret" if ctx.is_private else "public",
        "params": p.to_dict(),
        "slots": p.slots,
        "capacity": p.capacity,
        "worst_case_error": p.error_bound(clients=1, total_weight=1),
    }


@app.command("keygen")
@handle_errors
def keygen_cmd(
    out: Annotated[Path, typer.Option("--out", help="Directory for secret.ctx and public.ctx.")],
    max_abs_update: Annotated[
        float, typer.Option(help="Bound on every weight a client encrypts (clients enforce it).")
    ] = _RUN.max_abs_update,
    max_total_weight: Annotated[
        int, typer.Option(help="Bound on the summed sample counts of one round.")
    ] = _RUN.max_total_weight,
    tolerance: Annotated[
        float, typer.Option(help="Max abs error allowed on the averaged model.")
    ] = _RUN.tolerance,
    force: Annotated[bool, typer.Option("--force", help="Replace existing key files.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Write secret.ctx (clients, mode 0600) and public.ctx (coordinator, no secret key)."""
    params = HEParams.for_bounds(max_abs_update, max_total_weight, tolerance)
    secret_path, public_path = keygen(out, params, force=force)
    summary = _describe(load_context(public_path, require_secret=False))
    summary |= {"secret_context": str(secret_path), "public_context": str(public_path)}
    if json_out:
        print_json(summary)
    else:
        print(f"secret context (clients only, 0600): {secret_path}")
        print(f"public context (coordinator):        {public_path}")
        print(
            f"CKKS N={params.poly_modulus_degree} moduli={list(params.coeff_mod_bit_sizes)} "
            f"scale=2^{params.global_scale_bits} key id {summary['key_id']}"
        )


@app.command("info")
@handle_errors
def info_cmd(
    path: Annotated[Path, typer.Argument(help="A context file written by `he keygen`.")],
    secret: Annotated[
        bool, typer.Option("--secret/--public", help="Which kind of context PATH must be.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Load a context file the way a client (--secret) or the coordinator (--public) does."""
    summary = _describe(load_context(path, require_secret=secret))
    if json_out:
        print_json(summary)
    else:
        p = summary["params"]
        print(
            f"{path}: {summary['kind']} CKKS context, key id {summary['key_id']}, "
            f"N={p['poly_modulus_degree']} moduli={p['coeff_mod_bit_sizes']} "
            f"scale=2^{p['global_scale_bits']}"
        )
