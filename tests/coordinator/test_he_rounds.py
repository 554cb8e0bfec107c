"""HE secure aggregation through the round loop and the real ClientApp (in-process grid)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Message
from testkit.fed import LocalGrid, write_config

from veilfed.coordinator import checkpoint
from veilfed.coordinator.prepare import prepare
from veilfed.coordinator.rounds import Coordinator
from veilfed.crypto.he import decrypt_average
from veilfed.crypto.he_keys import load_context
from veilfed.crypto.he_packing import flatten
from veilfed.data.partition import client_name
from veilfed.errors import UsageError
from veilfed.federation.keys import REPLY_KEY

# Per value of the averaged weights: CKKS noise of the sum is ≤ 3.1e-6 / Σ n_k (docs/he.md,
# HEParams.error_bound); after the next local round that difference is propagated by SGD
# (lr 0.05, a handful of steps), so 1e-4 is a generous bound that still catches a wrong average
# (e.g. unweighted instead of sample-weighted differs by ~1e-2 here).
TOLERANCE = 1e-4
# Two-client runs keep these tests small; the default floor (3) is tested on its own below.
FLOOR_2 = "[he]\nmin_contributors = 2\n"


def _run(tmp_path, he: bool, grid_kw=None, extra: str = "", **cfg):
    cfg_path = write_config(tmp_path, extra=extra, **cfg)
    settings, tracker = prepare(cfg_path, {}, None, None, None, None, tmp_path / "runs", he=he)
    Coordinator(LocalGrid(settings.federated.clients, **(grid_kw or {})), settings, tracker).run()
    return settings, tracker, checkpoint.load(settings.run_dir)


def _decrypted_global(settings, ckpt) -> np.ndarray:
    """What any client holds after the last round (the test plays a client: it has secret.ctx)."""
    secret = load_context(settings.he.secret_path, require_secret=True)
    return decrypt_average(secret, ckpt.he_global).average


def test_encrypted_fedavg_equals_plaintext_fedavg(tmp_path, monkeypatch):
    from veilfed.privacy.noise import INSECURE_SEED_ENV

    # Both runs must add the same DP noise to compare their models: test-only replayable noise.
    monkeypatch.setenv(INSECURE_SEED_ENV, "7")
    he_settings, tracker, he_ckpt = _run(
        tmp_path, True, extra="[he]\nshadow = true\n", clients=3, rounds=2
    )
    _, _, plain_ckpt = _run(tmp_path, False, clients=3, rounds=2)
    assert [h["aggregated"] for h in he_ckpt.history] == [True, True]
    assert he_ckpt.he_global is not None
    # the coordinator kept only the (public) initial weights, never a trained plaintext model
    plain_flat, _ = flatten(list(plain_ckpt.arrays.values()))
    initial_flat, _ = flatten(list(he_ckpt.arrays.values()))
    assert np.max(np.abs(initial_flat - plain_flat)) > 1e-3
    he_flat = _decrypted_global(he_settings, he_ckpt)
    assert np.max(np.abs(he_flat - plain_flat)) < TOLERANCE
    # every round: the evaluating clients compared their decryption with the shadow FedAvg
    for h in he_ckpt.history:
        m = h["metrics"]
        assert 0 <= m["he/max_abs_error"] < 1e-5
        assert m["he/encrypt_ms"] > 0 and m["he/aggregate_ms"] > 0 and m["he/decrypt_ms"] > 0
        assert 4 < m["he/bytes_ratio"] < 12
    names = set(tracker.client.get_run(tracker.run_id).data.metrics)
    assert {"he/encrypt_ms", "he/aggregate_ms", "he/decrypt_ms", "he/bytes_ratio"} <= names
    assert "he/max_abs_error" in names


def test_coordinator_only_loads_the_public_context(tmp_path, monkeypatch):
    import veilfed.crypto.he_keys as he

    settings, tracker = prepare(
        write_config(tmp_path, clients=2, rounds=1, extra=FLOOR_2),
        {},
        None,
        None,
        None,
        None,
        tmp_path,
        he=True,
    )
    loaded: list[tuple[str, bool]] = []
    real = he.load_context

    def spy(path, require_secret):
        loaded.append((str(path), require_secret))
        return real(path, require_secret)

    monkeypatch.setattr(he, "load_context", spy)
    coord = Coordinator(LocalGrid(2), settings, tracker)
    assert loaded == [(settings.he.public_path, False)]
    assert coord.he_ctx is not None and not coord.he_ctx.is_private
    coord.run()
    ckpt = checkpoint.load(settings.run_dir)
    with pytest.raises(UsageError, match="secret"):
        decrypt_average(coord.he_ctx, ckpt.he_global)


def _tamper(foreign_blob: bytes):
    def tamper(reply: Message) -> Message:
        cid = reply.content[REPLY_KEY]["client-id"]
        he = reply.content.config_records.get("he")
        blob = bytes(he["update"])
        if cid == client_name(0):
            he["update"] = foreign_blob
        elif cid == client_name(1):
            he["update"] = blob[: len(blob) - 100]
        elif cid == client_name(2):  # plaintext when HE is required
            from flwr.app import Array, ArrayRecord

            del reply.content["he"]
            reply.content["arrays"] = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
        elif cid == client_name(3):
            he["update"] = b"VFHEUPD1" + (5).to_bytes(4, "big") + b"{bad}" + blob[-64:]
        return reply

    return tamper


def test_bad_encrypted_updates_are_rejected_and_the_round_goes_on(tmp_path):
    from veilfed.crypto.he import encrypt_update
    from veilfed.crypto.he_keys import new_context
    from veilfed.crypto.he_params import HEParams

    foreign = new_context(HEParams.for_bounds(16.0, 2**16))
    settings, tracker = prepare(
        write_config(tmp_path, clips=15, clients=5, rounds=1),
        {},
        None,
        None,
        None,
        None,
        tmp_path,
        he=True,
    )
    size = sum(a.size for a in Coordinator(LocalGrid(5), settings, tracker).arrays.values())
    foreign_blob = encrypt_update(foreign, np.zeros(size), 3).to_bytes()
    Coordinator(LocalGrid(5, tamper=_tamper(foreign_blob)), settings, tracker).run()
    ckpt = checkpoint.load(settings.run_dir)
    h = ckpt.history[0]
    rejected = h["rejected"]
    assert set(rejected) == {client_name(0), client_name(1), client_name(2), client_name(3)}
    assert "stale or foreign key" in rejected[client_name(0)]
    assert "truncated" in rejected[client_name(1)]
    assert "plaintext" in rejected[client_name(2)]
    assert "malformed" in rejected[client_name(3)]
    assert h["metrics"]["round/rejected"] == 4 and h["metrics"]["round/accepted"] == 1
    # the survivor's update alone is below the contributor floor: never released as a model
    assert not h["aggregated"] and ckpt.he_global is None


def test_client_enforces_the_norm_bound_and_withholds(tmp_path):
    cfg = write_config(tmp_path, clients=2, rounds=1, extra="norm_bound = 1e-6\n" + FLOOR_2)
    settings, tracker = prepare(cfg, {}, None, None, None, None, tmp_path, he=True)
    Coordinator(LocalGrid(2), settings, tracker).run()
    h = checkpoint.load(settings.run_dir).history[0]
    assert not h["aggregated"] and len(h["rejected"]) == 2
    for reason in h["rejected"].values():
        assert "withheld" in reason and "norm bound" in reason
    # the privacy reports still arrived (the ε was spent): no gap in the chains
    assert h["metrics"]["privacy/eps_max"] > 0


def test_resume_keeps_the_encrypted_aggregate(tmp_path):
    cfg = write_config(tmp_path, clients=2, rounds=2, extra=FLOOR_2)
    settings, tracker = prepare(cfg, {}, None, None, None, None, tmp_path, he=True)
    with pytest.raises(KeyboardInterrupt):
        Coordinator(LocalGrid(2, kill_after=3), settings, tracker).run()
    after_one = checkpoint.load(settings.run_dir)
    assert after_one.round == 1 and after_one.he_global is not None
    resumed = Coordinator(LocalGrid(2), settings, tracker)
    assert resumed.he_global == after_one.he_global
    resumed.run()
    assert checkpoint.load(settings.run_dir).round == 2


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "HE context file not found"),
        ("swapped", "holds the HE secret key"),
        ("median", "incompatible with HE"),
        ("central", "incompatible with HE"),
    ],
)
def test_bad_he_setup_is_a_one_line_usage_error(tmp_path, setup, message):
    import shutil

    from typer.testing import CliRunner

    from veilfed.cli.main import app
    from veilfed.crypto.he_keys import keygen
    from veilfed.crypto.he_params import HEParams

    cfg = write_config(tmp_path, clients=3, rounds=1)
    args = ["simulate", "--config", str(cfg), "--he"]
    keys = tmp_path / "keys"
    if setup == "missing":
        args += ["--he-dir", str(keys)]
    elif setup == "swapped":
        keygen(keys, HEParams.for_bounds(16.0, 2**16))
        shutil.copy(keys / "secret.ctx", keys / "public.ctx")
        args += ["--he-dir", str(keys)]
    else:
        line = 'strategy = "median"' if setup == "median" else 'central_dp = "fixed"'
        cfg.write_text(cfg.read_text() + line + "\n")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists() or not any(
        p.name != "stores" for p in (tmp_path / "runs").iterdir()
    ), "no run is created for bad input"


def test_an_aggregate_no_client_can_decrypt_is_discarded(tmp_path):
    """A forged key id passes every header check; the clients' integrity check catches it."""
    from dataclasses import replace

    from veilfed.crypto.he import encrypt_update
    from veilfed.crypto.he_keys import new_context
    from veilfed.crypto.he_update import EncryptedUpdate

    settings, tracker = prepare(
        write_config(tmp_path, clients=2, rounds=1, extra=FLOOR_2),
        {},
        None,
        None,
        None,
        None,
        tmp_path,
        he=True,
    )
    public = load_context(settings.he.public_path, require_secret=False)
    foreign = new_context(public.params)

    def forge(reply: Message) -> Message:
        if reply.content[REPLY_KEY]["client-id"] == client_name(0):
            he = reply.content["he"]
            real = EncryptedUpdate.from_bytes(bytes(he["update"]))
            fake = encrypt_update(foreign, np.zeros(real.size), 3)
            he["update"] = replace(fake, key_id=public.key_id).to_bytes()
        return reply

    Coordinator(LocalGrid(2, tamper=forge), settings, tracker).run()
    ckpt = checkpoint.load(settings.run_dir)
    h = ckpt.history[0]
    assert not h["aggregated"] and h["metrics"]["he/discarded"] == 1
    assert ckpt.he_global is None  # back to the (public) initial weights


def _single_update_run(tmp_path):
    """A 3-client HE run (default floor 3); the coordinator keeps each round-1 update."""
    settings, tracker = prepare(
        write_config(tmp_path, clients=3, rounds=1), {}, None, None, None, None, tmp_path, he=True
    )
    kept: dict[str, bytes] = {}

    def keep(reply: Message) -> Message:
        kept[reply.content[REPLY_KEY]["client-id"]] = bytes(reply.content["he"]["update"])
        return reply

    grid = LocalGrid(3, tamper=keep)
    Coordinator(grid, settings, tracker).run()
    assert checkpoint.load(settings.run_dir).history[0]["aggregated"]  # 3 of 3: at the floor
    return settings, grid, kept


def _send(settings, grid, kind: str, blob: bytes, partition: int) -> Message:
    """A train/evaluate message carrying ``blob`` as the global model, to one real ClientApp."""
    from flwr.app import ArrayRecord, ConfigRecord, MessageType, RecordDict

    from veilfed.federation.keys import GLOBAL_KEY, SETTINGS_KEY

    node = list(grid.contexts)[partition]
    config = ConfigRecord({SETTINGS_KEY: settings.to_json(), GLOBAL_KEY: blob, "server-round": 2})
    kind_ = MessageType.TRAIN if kind == "train" else MessageType.EVALUATE
    msg = Message(
        RecordDict({"arrays": ArrayRecord(), "config": config}),
        message_type=kind_,
        dst_node_id=node,
    )
    return grid.app(msg, grid.contexts[node])


def _forged(settings, blob: bytes, how: str) -> bytes:
    """Client A's lone ciphertext passed off as an aggregate of 3, with the public context only."""
    import tenseal as ts

    from veilfed.crypto.he_update import EncryptedUpdate

    public = load_context(settings.he.public_path, require_secret=False)
    update = EncryptedUpdate.from_bytes(blob)
    run, rnd, _ = update.contributors[0].split("/")
    labels = [f"{run}/{rnd}/{client_name(i)}" for i in range(3)]
    chunks = []
    for raw in update.chunks:
        vec = ts.ckks_vector_from(public.ts_context, raw)
        # tripled: A + A + A gives 3 in the check slots and A's weights after dividing;
        # plaintext-count: a plaintext 2 added to the check slots (adding needs no key)
        plain = [0.0] * (vec.size() - 1) + [2.0]
        vec = vec + vec + vec if how == "tripled" else vec + plain
        chunks.append(vec.serialize())
    update.chunks, update.contributors = chunks, labels
    return update.to_bytes()


def test_a_client_refuses_another_clients_lone_update(tmp_path):
    """The coordinator forwards client A's single ciphertext to B (train and evaluate): B refuses
    with a one-line declined reply, before decrypting anything, and stays eligible."""
    from veilfed.federation.keys import REFUSED_MODEL

    settings, grid, kept = _single_update_run(tmp_path)
    for kind in ("train", "evaluate"):
        reply = _send(settings, grid, kind, kept[client_name(0)], partition=1)
        info = reply.content[REPLY_KEY]
        assert not reply.has_error() and info["status"] == "declined" and info[REFUSED_MODEL]
        assert "below this client's floor of 3" in info["reason"]
        assert client_name(1) in info["reason"] and "\n" not in info["reason"]
        assert not reply.content.array_records and not reply.content.metric_records
        assert "he" not in reply.content.config_records  # no update was trained on it


@pytest.mark.parametrize("how", ["tripled", "plaintext-count"])
def test_a_forged_contributor_count_is_refused(tmp_path, how):
    """Cheap forgeries of the count with only the public context fail the contributor tags."""
    settings, grid, kept = _single_update_run(tmp_path)
    forged = _forged(settings, kept[client_name(0)], how)
    reply = _send(settings, grid, "evaluate", forged, partition=1)
    info = reply.content[REPLY_KEY]
    assert info["status"] == "declined" and "integrity check" in info["reason"]
    assert "contributor tags" in info["reason"]
    assert not reply.content.metric_records
    # the honest aggregate of the same round still decrypts for that client
    honest = _send(settings, grid, "evaluate", checkpoint.load(settings.run_dir).he_global, 1)
    assert honest.content["metrics"]["num-examples"] > 0


def test_the_floor_needs_enough_sampled_clients(tmp_path):
    cfg = write_config(tmp_path, clients=4, rounds=1, fraction=0.5)
    with pytest.raises(UsageError, match="min_contributors = 3"):
        prepare(cfg, {}, None, None, None, None, tmp_path, he=True)


def test_a_client_refuses_an_aggregate_of_another_run_or_a_later_round(tmp_path):
    """Stale-model replay: the coordinator sends an honest aggregate (same keys) labelled for
    another run, or a train message whose aggregate is not of an earlier round: refused."""
    from dataclasses import replace

    settings, grid, _ = _single_update_run(tmp_path)
    honest = checkpoint.load(settings.run_dir).he_global  # round 1 of this run
    other_run = replace(settings, run_id="another-run")
    for kind in ("train", "evaluate"):
        info = _send(other_run, grid, kind, honest, partition=1).content[REPLY_KEY]
        assert info["status"] == "declined" and "not this run another-run" in info["reason"]
    # a train message of round 1 cannot carry round 1's own aggregate
    from flwr.app import ArrayRecord, ConfigRecord, MessageType, RecordDict

    from veilfed.federation.keys import GLOBAL_KEY, SETTINGS_KEY

    node = list(grid.contexts)[1]
    config = ConfigRecord({SETTINGS_KEY: settings.to_json(), GLOBAL_KEY: honest, "server-round": 1})
    msg = Message(
        RecordDict({"arrays": ArrayRecord(), "config": config}),
        message_type=MessageType.TRAIN,
        dst_node_id=node,
    )
    info = grid.app(msg, grid.contexts[node]).content[REPLY_KEY]
    assert info["status"] == "declined" and "not a round before 1" in info["reason"]
    # the same aggregate in this run's round-2 train message is accepted as the global model
    # (the client may still decline to train, on its own budget)
    from veilfed.federation.keys import REFUSED_MODEL

    info = _send(settings, grid, "train", honest, partition=1).content[REPLY_KEY]
    assert not info.get(REFUSED_MODEL) and "HE aggregate" not in info.get("reason", "")
