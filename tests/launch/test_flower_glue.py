"""What veilfed hands Flower: the node config string and the app project (FAB) it submits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk
from flwr.common.config import parse_config_args

from veilfed.clients.policy import NodePolicy
from veilfed.crypto.app_signing import SIGNATURE_KEY
from veilfed.errors import UsageError
from veilfed.launch.app_project import CLIENT_APP, SERVER_APP, write_app_project
from veilfed.launch.start_coordinator import CoordinatorOptions, routine_line, run_config_for
from veilfed.launch.start_node import NodeOptions, node_config


def _node(tmp_path: Path, **kw) -> NodeOptions:  # type: ignore[no-untyped-def]
    return NodeOptions(
        superlink="h:1",
        shard=tmp_path / "my shard.vfs",
        key_file=tmp_path / "k.key",
        certs=tmp_path,
        auth_key=tmp_path / "a.key",
        state=tmp_path / "node state",
        **kw,
    )


def test_node_config_parses_in_flower(tmp_path: Path) -> None:
    policy = NodePolicy(budget=6.5, max_delta=1e-5, accountants=("rdp",), allow_no_dp=True)
    opts = _node(tmp_path, he_context=tmp_path / "he" / "secret.ctx", policy=policy)
    parsed = parse_config_args([node_config("client-0002", opts)])
    assert parsed == {
        "client-id": "client-0002",
        "store": str(tmp_path / "node state" / "client" / "store"),  # spaces survive
        "key-file": str(tmp_path / "k.key"),
        "state-dir": str(tmp_path / "node state" / "client"),
        "he-context": str(tmp_path / "he" / "secret.ctx"),
        "epsilon-budget": 6.5,
        "max-delta": 1e-5,
        "accountants": "rdp",
        "allow-no-dp": True,
        "he-min-contributors": 3,
    }
    assert NodePolicy.from_node_config(parsed) == policy  # what the ClientApp reads back
    default = parse_config_args([node_config("c", _node(tmp_path))])
    assert "he-context" not in default and "epsilon-budget" not in default
    assert NodePolicy.from_node_config(default) == NodePolicy()


def test_node_config_refuses_quotes(tmp_path: Path) -> None:
    opts = _node(tmp_path)
    opts.state = tmp_path / "it's"
    with pytest.raises(UsageError, match="quotes"):
        node_config("client-0000", opts)


def test_app_project_builds_a_fab_with_our_apps(tmp_path: Path) -> None:
    import io
    import tomllib
    import zipfile

    opts = CoordinatorOptions(
        address="127.0.0.1:9092",
        certs=tmp_path,
        auth_keys=tmp_path,
        config=tmp_path / "exp.toml",
        state=tmp_path / "state",
        resume="abc",
    )
    cfg = run_config_for(opts, {"client-0000": 11, "client-0001": 12, "client-0002": 13})
    assert cfg["clients"] == 3 and cfg["resume"] == "abc"
    assert json.loads(str(cfg["node-clients"]))["12"] == "client-0001"
    assert cfg["config"] == str((tmp_path / "exp.toml").absolute())
    fab = build_fab_from_disk(write_app_project(tmp_path / "app", cfg))
    with zipfile.ZipFile(io.BytesIO(fab)) as zf:
        project = tomllib.loads(zf.read("pyproject.toml").decode())
    flwr = project["tool"]["flwr"]["app"]
    assert flwr["components"] == {"serverapp": SERVER_APP, "clientapp": CLIENT_APP}
    assert flwr["config"] == {**cfg, SIGNATURE_KEY: ""}  # the slot the signature fills per run


def test_routine_superlink_lines_are_debug_only() -> None:
    assert routine_line('INFO [uvicorn.access] 127.0.0.1:1 - "POST /v1/fleet/pull" 200')
    assert routine_line("INFO :      [Fleet.PullMessages] node_id=1")
    assert not routine_line("INFO :      Created run 1 in federation @none/default")


def test_app_references_resolve_to_flower_apps() -> None:
    import importlib
    import tomllib

    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    def load(ref: str) -> object:
        module, attr = ref.split(":")
        return getattr(importlib.import_module(module), attr)

    assert isinstance(load(SERVER_APP), ServerApp)
    # One ServerApp: the app real nodes get is the one `flwr run .` and simulations run.
    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["tool"]["flwr"]["app"]["components"]["serverapp"] == SERVER_APP
    from veilfed.coordinator.server_app import app
    from veilfed.launch import simulation

    assert load(SERVER_APP) is app is simulation.server_app
    assert isinstance(load(CLIENT_APP), ClientApp)
