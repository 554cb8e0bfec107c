"""Flower's SuperNode, running only app bundles signed by an entity the node trusts.

``flower-supernode --trusted-entities FILE`` makes Flower's SuperNode verify every run's FAB
before any of its code runs (``flwr.supernode.start_client_internal``: a signature by a trusted
Ed25519 key over the FAB's hash, else an error reply instead of a task). Its SuperLink, though,
delivers verification records only for apps from Flower Hub; for the FAB ``veilfed coordinator
start`` uploads, every node would refuse every run. This module runs the same SuperNode with one
addition: when the SuperNode fetches a run's FAB, the signature the coordinator put into the run's
config (``veilfed.crypto.app_signing.SIGNATURE_KEY``) is checked against the trusted entities and,
if it holds, attached to the FAB in Flower's format; Flower's own check then verifies it again.
An unsigned bundle, one signed by another key, an altered one, or a run that overrides any other
config key gets nothing attached, so Flower refuses it; the node logs one line per refused run.

Usage: ``python -m veilfed.launch.supernode FLOWER-SUPERNODE-ARGS... --trusted-entities FILE``
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Callable
from logging import ERROR, INFO
from pathlib import Path
from typing import Any

from veilfed.crypto.app_signing import check_bundle, load_trusted_entities
from veilfed.errors import UsageError

REFUSED = "refused its app bundle"  # the node's log line for a refused run contains this

_refused_runs: set[int] = set()


def _trusted_path(argv: list[str]) -> Path:
    for i, arg in enumerate(argv):
        if arg == "--trusted-entities" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--trusted-entities="):
            return Path(arg.split("=", 1)[1])
    raise SystemExit("veilfed.launch.supernode: --trusted-entities FILE is required")


def signed_fab_getter(
    get_fab: Callable[[str, int], Any],
    get_run: Callable[[int], Any],
    trusted: dict[str, Any],
    log: Callable[..., None],
) -> Callable[[str, int], Any]:
    """Wrap the SuperNode's FAB fetch: attach a trusted signature record, or none."""

    def fetch(fab_hash: str, run_id: int) -> Any:
        fab = get_fab(fab_hash, run_id)
        run = get_run(run_id)
        verdict = check_bundle(fab.content, dict(run.override_config), trusted)
        if verdict.ok:
            log(INFO, "run %s: app bundle %s", run_id, verdict.reason)
        elif run_id not in _refused_runs:
            _refused_runs.add(run_id)
            log(ERROR, "run %s: %s: %s", run_id, REFUSED, verdict.reason)
        return dataclasses.replace(fab, verifications=verdict.verifications)

    return fetch


def install(trusted: dict[str, Any]) -> None:
    """Make Flower's SuperNode fetch FABs through :func:`signed_fab_getter` (fail closed)."""
    from flwr.supercore import log
    from flwr.supernode import start_client_internal as sci

    original = sci._pull_and_store_message
    params = inspect.signature(original).parameters
    if not {"get_fab", "get_run", "trusted_entities"} <= set(params):
        raise SystemExit(
            "veilfed.launch.supernode: this Flower version's SuperNode cannot be given signed "
            "bundles (no get_fab/get_run/trusted_entities in _pull_and_store_message)"
        )

    def pull(**kwargs: Any) -> Any:
        if not kwargs.get("trusted_entities"):
            raise SystemExit("veilfed.launch.supernode: the SuperNode has no trusted entities")
        kwargs["get_fab"] = signed_fab_getter(kwargs["get_fab"], kwargs["get_run"], trusted, log)
        return original(**kwargs)

    sci._pull_and_store_message = pull


def main(argv: list[str] | None = None) -> None:
    from flwr.supernode.cli.flower_supernode import flower_supernode

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        trusted = load_trusted_entities(_trusted_path(args))
    except UsageError as exc:
        raise SystemExit(f"veilfed.launch.supernode: {exc}") from None
    install(trusted)
    sys.argv = ["flower-supernode", *args]
    flower_supernode()


if __name__ == "__main__":
    main()
