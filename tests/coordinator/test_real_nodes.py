"""The coordinator with real nodes (node configs as `veilfed node start` writes them), in-process.

The coordinator side holds no data, no client keys and no HE secret: each node trains on the
store imported from its own bundle, signs with its own key (pinned at discovery) and encrypts with
the secret context it was given. The same path runs over real processes in tests/deployment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from testkit.fed import LocalGrid, write_config
from testkit.nodes import CLIENTS, node_configs

from veilfed.coordinator import checkpoint
from veilfed.coordinator.prepare import prepare_deployment
from veilfed.coordinator.rounds import Coordinator
from veilfed.coordinator.summary import finish
from veilfed.crypto.he_keys import keygen
from veilfed.crypto.he_params import HEParams
from veilfed.errors import CheckFailed, UsageError


def test_real_nodes_train_on_their_own_shards_under_he(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        clients=2,
        extra="[he]\nenabled = true\nshadow = true\nmax_abs_update = 16.0\nmin_contributors = 2\n",
    )
    secret, public = keygen(tmp_path / "he", HEParams.for_bounds(16.0, 2**16, 1e-5))
    nodes = node_configs(config, tmp_path, secret)
    settings, tracker = prepare_deployment(config, len(CLIENTS), tmp_path / "runs", public)
    assert settings.store == "" and settings.he.secret_path == ""
    assert not settings.he.shadow  # shadow copies are plaintext: never on real nodes
    Coordinator(LocalGrid(2, node_configs=nodes), settings, tracker).run()
    summary = finish(settings, tracker, 1.0)

    run_dir = Path(settings.run_dir)
    ckpt = checkpoint.load(run_dir)
    assert ckpt is not None and ckpt.round == 2
    assert all(h["aggregated"] and len(h["sampled"]) == 2 for h in ckpt.history)
    assert summary["he"]["ciphertext_bytes"] > 0 and summary["he"]["max_abs_error"] is None
    assert set(summary["clients"]) == set(CLIENTS)
    assert not (run_dir / "shards.json").exists() and not (run_dir / "clients").exists()
    for cid in CLIENTS:
        state = tmp_path / cid / "client"
        assert (run_dir / "keys" / f"{cid}.pub").read_bytes() == (
            state / "signing.key.pub"
        ).read_bytes()
        assert (state / "accountant" / f"{cid}.json").is_file()  # the node's, not the run's


@pytest.fixture
def plain_nodes(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    config = write_config(tmp_path, clients=2, extra="[he]\nmin_contributors = 2\n")
    return config, node_configs(config, tmp_path, None)


def _coordinator(tmp_path: Path, config: Path, nodes, he_public=None, names=None) -> Coordinator:  # type: ignore[no-untyped-def]
    settings, tracker = prepare_deployment(config, len(nodes), tmp_path / "runs", he_public)
    tracker.finish()
    grid = LocalGrid(len(nodes), node_configs=nodes)
    node_clients = None
    if names is not None:  # the auth key each node authenticates with, in node order
        node_clients = dict(zip(grid.contexts, names, strict=True))
    return Coordinator(grid, settings, tracker, node_clients)


def test_a_node_that_comes_back_with_another_signing_key_is_refused(
    tmp_path: Path, plain_nodes
) -> None:
    from veilfed.coordinator.admission import discover

    config, nodes = plain_nodes
    coord = _coordinator(tmp_path, config, nodes)
    found = discover(coord.grid, coord.settings_json, 2, 30)
    assert set(coord._admit(found)) == set(CLIENTS)
    assert coord._admit(found)  # the same keys again: fine (a restarted node)
    key = Path(nodes[0]["state-dir"]) / "signing.key"
    key.unlink()
    (key.parent / "signing.key.pub").unlink()  # the node lost its key and made a new one
    with pytest.raises(CheckFailed, match="client client-0000: already registered with key"):
        coord._admit(discover(coord.grid, coord.settings_json, 2, 30))


def test_two_nodes_with_one_clients_shard_are_refused(tmp_path: Path, plain_nodes) -> None:
    config, nodes = plain_nodes
    twins = [nodes[0], {**nodes[0], "state-dir": str(tmp_path / "twin")}]
    with pytest.raises(UsageError, match="both hold client client-0000's shard"):
        _coordinator(tmp_path, config, twins).run()


def test_node_without_the_runs_he_keys_is_refused_by_name(tmp_path: Path, plain_nodes) -> None:
    config, nodes = plain_nodes
    _, public = keygen(tmp_path / "he", HEParams.for_bounds(16.0, 2**16, 1e-5))
    other, _ = keygen(tmp_path / "other", HEParams.for_bounds(16.0, 2**16, 1e-5))
    mixed = [{**nodes[0], "he-context": str(other)}, nodes[1]]
    with pytest.raises(UsageError, match="client client-0000: encrypts with HE keys"):
        _coordinator(tmp_path, config, mixed, public).run()
    with pytest.raises(UsageError, match="client client-0000: has no HE context"):
        _coordinator(tmp_path, config, nodes, public).run()


def test_small_shard_and_delta_are_checked_per_client(tmp_path: Path, plain_nodes) -> None:
    config, nodes = plain_nodes
    coord = _coordinator(tmp_path, config, nodes)
    found = {"client-0000": (1, {"client-id": "client-0000", "clips": 1, "train-examples": 1})}
    with pytest.raises(UsageError, match="client client-0000: shard has 1 clip"):
        coord._admit(found)
    found = {
        "client-0000": (1, {"client-id": "client-0000", "clips": 2700, "train-examples": 2000})
    }
    with pytest.raises(UsageError, match=r"client-0000: privacy\.delta .* lower \[privacy\]"):
        coord._admit(found)  # δ = 1e-3 is not < 1/2000


def test_real_node_never_reads_the_coordinators_files(tmp_path: Path, plain_nodes) -> None:
    """A node config without its store is an error naming what to do, never a fallback."""
    from veilfed.clients.inputs import client_inputs

    config, nodes = plain_nodes
    coord = _coordinator(tmp_path, config, nodes)
    broken = {k: v for k, v in nodes[0].items() if k != "store"}
    with pytest.raises(UsageError, match="node config lacks store; start the node with"):
        client_inputs(coord.s, broken)


def test_node_budget_caps_the_run_and_composes_across_runs(tmp_path: Path, plain_nodes) -> None:
    """A node's own --budget wins over the run's and covers every run it joins. σ is calibrated
    for ε = 8 after both rounds; a node capped at 6.5 declines round 2, says so, and signs its cap
    into its report. A second run (new run id, same shard) does not reset the node's ε: the capped
    node declines at once, and the other node (--budget 8), which spent ε = 8 in the first run,
    cannot spend again."""
    from veilfed.privacy.report_schema import SignedReport

    config, nodes = plain_nodes
    capped = [{**nodes[0], "epsilon-budget": 6.5}, nodes[1]]
    first = _coordinator(tmp_path, config, capped)
    first.run()
    ckpt = checkpoint.load(first.run_dir)
    assert ckpt is not None
    second_round = ckpt.history[1]
    assert second_round["declined"]["client-0000"].endswith("> budget 6.5 (delta=0.001)")
    assert ckpt.clients["client-0001"]["rounds"] == 2 and ckpt.clients["client-0000"]["rounds"] == 1
    report = SignedReport.from_json(ckpt.clients["client-0000"]["report"]).report
    assert report.epsilon_budget == 6.5
    accountant = Path(nodes[0]["state-dir"]) / "accountant" / "client-0000.json"
    before = accountant.read_bytes()

    second = _coordinator(tmp_path, config, capped)
    assert second.s.run_id != first.s.run_id
    second.run()
    again = checkpoint.load(second.run_dir)
    assert again is not None
    declined = again.history[0]["declined"]
    assert set(declined) == set(CLIENTS)  # round 1 of the new run: nobody starts from ε = 0
    assert "client client-0000: declining to train:" in declined["client-0000"]
    assert declined["client-0000"].endswith("> budget 6.5 (delta=0.001)")
    assert declined["client-0001"].endswith("> budget 8 (delta=0.001)")
    assert accountant.read_bytes() == before  # declining spends nothing


def _reply(tmp_path: Path, config: Path, node: dict[str, Any], **privacy: Any) -> Any:
    """The reply of one real node to round 1 of a run whose privacy settings are ``privacy``."""
    import dataclasses

    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

    from veilfed.clients.client_app import app
    from veilfed.federation.weights import initial_arrays

    settings, tracker = prepare_deployment(config, 2, tmp_path / "runs", None)
    tracker.finish()
    settings = dataclasses.replace(
        settings, privacy=dataclasses.replace(settings.privacy, **privacy)
    )
    arrays = initial_arrays(settings)
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "config": ConfigRecord({"settings": settings.to_json(), "server-round": 1}),
        }
    )
    ctx = Context(run_id=1, node_id=1, state=RecordDict(), run_config={}, node_config=node)
    return app(Message(content, message_type="train", dst_node_id=1), ctx).content["reply"]


def _refusal(tmp_path: Path, config: Path, node: dict[str, Any], **privacy: Any) -> str:
    reply = _reply(tmp_path, config, node, **privacy)
    assert reply["status"] == "declined", dict(reply)
    reason = str(reply["reason"])
    assert reason.startswith("client client-0000: declining to train: the run's")
    assert "\n" not in reason and not (Path(node["state-dir"]) / "accountant").exists()
    return reason


def test_a_node_refuses_privacy_settings_outside_its_policy(tmp_path: Path, plain_nodes) -> None:
    """The coordinator picks ε, δ and the accountant; the node checks each against its policy
    and declines with one line naming itself and the setting, before it spends anything."""
    import math

    from veilfed.clients.inputs import client_inputs
    from veilfed.clients.trainer import split_shard

    config, nodes = plain_nodes
    node = nodes[0]
    assert "epsilon is inf (no client DP)" in _refusal(tmp_path, config, node, epsilon=math.inf)
    no_budget = {k: v for k, v in node.items() if k != "epsilon-budget"}
    for privacy in ({}, {"epsilon": math.inf, "noise_multiplier": 0.3}, {"budget": 1e6}):
        reason = _refusal(tmp_path, config, {**no_budget, "allow-no-dp": True}, **privacy)
        assert "client DP needs this node's own epsilon budget and it has none" in reason
    assert "delta 0.5 is not below 1/n" in _refusal(tmp_path, config, node, delta=0.5)
    settings, tracker = prepare_deployment(config, 2, tmp_path / "n", None)
    tracker.finish()
    n = len(split_shard(settings, client_inputs(settings, node))[0])
    above = 1 / n + 1e-6
    reason = _refusal(tmp_path, config, node, delta=above)
    assert f"delta {above:g} is not below 1/n" in reason and f"{n} training examples" in reason
    reason = _refusal(tmp_path, config, node, accountant="gdp")
    assert "accountant 'gdp' is not one this node accepts (rdp, prv;" in reason
    strict = {**node, "max-delta": 1e-4}
    assert "delta 0.001 is above this node's limit 0.0001" in _refusal(tmp_path, config, strict)
    only_rdp = {**node, "accountants": "rdp"}
    assert "accountant 'prv' is not one" in _refusal(tmp_path, config, only_rdp, accountant="prv")
    opted_out = {**node, "allow-no-dp": True}  # the data owner's explicit choice
    assert _reply(tmp_path, config, opted_out, epsilon=math.inf)["status"] == "trained"


def test_a_node_must_present_the_shard_of_the_client_its_auth_key_names(
    tmp_path: Path, plain_nodes
) -> None:
    """Auth key client-0000 with client-0001's bundle (and vice versa) is refused by name; the
    matching assignment is admitted."""
    from veilfed.coordinator.admission import discover

    config, nodes = plain_nodes
    right = _coordinator(tmp_path, config, nodes, names=list(CLIENTS))
    assert set(right._admit(discover(right.grid, right.settings_json, 2, 30))) == set(CLIENTS)
    swapped = _coordinator(tmp_path, config, nodes, names=list(reversed(CLIENTS)))
    with pytest.raises(UsageError, match="client client-0000: its shard is on node .* client-0001"):
        swapped.run()
    stranger = _coordinator(tmp_path, config, nodes, names=["client-0000", "someone-else"])
    with pytest.raises(UsageError, match="client client-0001: .*someone-else"):
        stranger.run()


def test_a_larger_delta_in_a_later_run_cannot_make_the_nodes_history_look_cheaper(
    tmp_path: Path, plain_nodes
) -> None:
    """The attack: run 1 spends at δ 1e-3; run 2 asks a larger δ (still below 1/n), at which the
    same cumulative history reads as a smaller ε, to train past the node's budget. The node pins
    its accounting δ at its first DP release and declines run 2 without spending; a later run at
    a smaller δ (checked at its own δ, never looser) still trains."""
    import json

    from veilfed.clients.inputs import client_inputs
    from veilfed.clients.policy import NodePolicy
    from veilfed.clients.trainer import split_shard

    config, nodes = plain_nodes
    node = {**nodes[0], "epsilon-budget": 100.0}
    settings, tracker = prepare_deployment(config, 2, tmp_path / "n", None)
    tracker.finish()
    inputs = client_inputs(settings, node)
    inputs.state.public_key_pem()  # the node's signing key, made at its first discovery
    n = len(split_shard(settings, inputs)[0])
    accountant = Path(node["state-dir"]) / "accountant" / "client-0000.json"
    assert _reply(tmp_path, config, node)["status"] == "trained"  # run 1 at δ = 1e-3
    assert json.loads(accountant.read_text())["delta"] == 1e-3
    spent = accountant.read_bytes()

    larger = 0.9 / n
    assert 1e-3 < larger < 1 / n
    reply = _reply(tmp_path, config, node, delta=larger)
    assert reply["status"] == "declined"
    assert reply["reason"] == (
        f"client client-0000: declining to train: the run's delta {larger:g} is above the "
        "delta 0.001 this node's spending is accounted at"
    )
    assert accountant.read_bytes() == spent  # declining spends nothing
    smaller = _reply(tmp_path, config, node, delta=1e-4, budget=100.0)
    assert smaller["status"] == "trained", dict(smaller)
    assert json.loads(accountant.read_text())["delta"] == 1e-3  # the pin never moves

    assert NodePolicy(budget=8.0, max_delta=2e-3).pinned_delta(1e-5) == 2e-3  # the ceiling
    assert NodePolicy(budget=8.0).pinned_delta(1e-5) == 1e-5


def test_a_dp_node_cannot_start_without_its_own_budget(tmp_path: Path) -> None:
    """The coordinator never sets a node's cap: without --budget only a no-DP node starts."""
    from veilfed.clients.policy import NodePolicy
    from veilfed.launch.start_node import NodeOptions, preflight

    opts = NodeOptions("h:1", tmp_path, tmp_path, tmp_path, tmp_path, tmp_path)
    with pytest.raises(UsageError, match=r"^--budget is required: the most epsilon this node"):
        preflight(opts)
    NodePolicy(allow_no_dp=True).check_start()
    NodePolicy(budget=8.0).check_start()
