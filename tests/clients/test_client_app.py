"""ClientApp units: called directly with Flower messages (no Ray, no coordinator)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from testkit.fed import make_run, write_config

from veilfed.clients.client_app import app, injected_failure
from veilfed.clients.inputs import client_inputs
from veilfed.clients.node_state import NodeState
from veilfed.clients.trainer import split_shard
from veilfed.federation.weights import initial_arrays
from veilfed.privacy.report_schema import SignedReport
from veilfed.privacy.report_signing import KeyRegistry


@pytest.fixture()
def run(tmp_path):
    settings, tracker = make_run(tmp_path, write_config(tmp_path, clients=3, rounds=2))
    tracker.finish()
    return settings


def _ctx(pid: int) -> Context:
    return Context(
        run_id=1,
        node_id=100 + pid,
        state=RecordDict(),
        run_config={},
        node_config={"partition-id": pid, "num-partitions": 3},
    )


def _msg(settings, kind: str, rnd: int, arrays=None) -> Message:
    arrays = arrays if arrays is not None else initial_arrays(settings)
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}),
            "config": ConfigRecord({"settings": settings.to_json(), "server-round": rnd}),
        }
    )
    return Message(content, message_type=kind, dst_node_id=100)


def _split(settings, pid: int):  # type: ignore[no-untyped-def]
    return split_shard(settings, client_inputs(settings, {"partition-id": pid}))


def test_query_names_the_client_its_shard_and_signing_key(run):
    q = Message(
        RecordDict({"config": ConfigRecord({"settings": run.to_json()})}),
        message_type="query",
        dst_node_id=101,
    )
    info = app(q, _ctx(1)).content["reply"]
    train_ids, eval_ids = _split(run, 1)
    assert info["client-id"] == "client-0001"
    assert info["clips"] == len(train_ids) + len(eval_ids) and info["train-examples"] == len(
        train_ids
    )
    registered = KeyRegistry(f"{run.run_dir}/keys").path("client-0001").read_text()
    assert info["signing-key"] == registered  # the key provisioned for the simulation


def _spent(settings, cid: str) -> int:
    """Steps the client's persisted accountant has counted (the one the node trains with)."""
    return NodeState.in_run(settings.run_dir, cid).accountants.load(cid).total_steps


def _other_model(settings):  # type: ignore[no-untyped-def]
    return {k: v + np.asarray(0.01, dtype=v.dtype) for k, v in initial_arrays(settings).items()}


def test_train_reply_is_signed_cumulative_and_a_true_replay_is_the_same_release(run):
    first = app(_msg(run, "train", 1), _ctx(0))
    info = first.content["reply"]
    assert info["status"] == "trained" and info["client-id"] == "client-0000"
    signed = SignedReport.from_json(info["report"])
    report = KeyRegistry(f"{run.run_dir}/keys").verify(signed, "client-0000")
    assert report.round == 1 and report.steps_total == report.steps_round > 0
    assert report.run_id == run.run_id and len(report.model_digest) == 64
    metrics = first.content["metrics"]
    assert metrics["num-examples"] == len(_split(run, 0)[0])
    spent = _spent(run, "client-0000")
    assert spent == report.steps_total

    # A re-run of round 1 from the same model (resume after a kill): the stored release, no spend.
    again = app(_msg(run, "train", 1), _ctx(0))
    assert again.content["reply"]["report"] == info["report"]
    for key, arr in first.content["arrays"].items():
        np.testing.assert_array_equal(arr.numpy(), again.content["arrays"][key].numpy())
    assert _spent(run, "client-0000") == spent

    third = app(_msg(run, "train", 3), _ctx(0))  # round 2 skipped: history continues from r1
    r3 = SignedReport.from_json(third.content["reply"]["report"]).report
    assert r3.prev_round == 1 and r3.prev_hash == report.digest()
    assert r3.steps_total == 2 * report.steps_total and r3.epsilon > report.epsilon
    state = json.loads(
        NodeState.in_run(run.run_dir, "client-0000").accountants.path("client-0000").read_text()
    )
    assert sum(n for _, _, n in state["history"]) == r3.steps_total


def test_a_round_resent_with_another_model_is_never_released_at_the_old_epsilon(run):
    """Attack: re-send round 1 with a different global model, hoping the node rewinds its
    accountant to before round 1 and releases a second update at round 1's ε. The node declines
    it and spends nothing; its stored release is not handed out for the other model either."""
    first = app(_msg(run, "train", 1), _ctx(0))
    spent = _spent(run, "client-0000")
    forged = app(_msg(run, "train", 1, _other_model(run)), _ctx(0))
    info = forged.content["reply"]
    assert info["status"] == "declined" and len(forged.content.array_records) == 0
    assert info["reason"].startswith("client client-0000: declining to train: round 1 of run")
    assert "another global model" in info["reason"] and "\n" not in info["reason"]
    assert _spent(run, "client-0000") == spent
    back = app(_msg(run, "train", 1), _ctx(0))  # the true replay still gets the first release
    assert back.content["reply"]["report"] == first.content["reply"]["report"]


def test_a_release_the_accountant_does_not_name_is_never_served(run, monkeypatch):
    """Crash between writing the release and counting it: the update never left (the ClientApp
    failed), the next attempt trains and counts; the orphaned file is never served. A stored
    release whose bytes changed is not served either: the node declines rather than retrain."""
    from veilfed.privacy.accountant_store import AccountantStore

    def crash(self, acc):  # type: ignore[no-untyped-def]
        raise OSError("power cut")

    with monkeypatch.context() as m:
        m.setattr(AccountantStore, "save", crash)
        with pytest.raises(OSError, match="power cut"):
            app(_msg(run, "train", 1), _ctx(0))
    assert _spent(run, "client-0000") == 0
    node = NodeState.in_run(run.run_dir, "client-0000")
    orphans = list(node.release_path("x").parent.iterdir())
    assert len(orphans) == 1  # written, never named by the accountant

    first = app(_msg(run, "train", 1), _ctx(0))
    assert first.content["reply"]["status"] == "trained" and _spent(run, "client-0000") > 0
    acc = node.accountants.load("client-0000")
    acc.select_run(run.run_id)
    path = node.release_path(acc.release["sha256"])
    assert path != orphans[0] and path.is_file()
    path.write_bytes(path.read_bytes() + b"tampered")
    again = app(_msg(run, "train", 1), _ctx(0))
    assert again.content["reply"]["status"] == "declined"


def test_a_stored_release_is_sealed_and_one_sealed_under_another_key_is_never_served(run):
    """The release holds the update and the unnoised train loss of private clips: at rest it is
    a Fernet token under a key derived from the client's key, never a readable array file. An
    attacker with write access who swaps in a release sealed under another key (and renames the
    accountant's record to match) gets a decline, not that update served as the node's."""
    import io

    from veilfed.clients.node_state import RELEASE_KEY_CONTEXT
    from veilfed.crypto.keys import FernetKey, read_key_file
    from veilfed.data.scan import scan

    first = app(_msg(run, "train", 1), _ctx(0))
    assert first.content["reply"]["status"] == "trained"
    node = NodeState.in_run(run.run_dir, "client-0000")
    acc = node.accountants.load("client-0000")
    acc.select_run(run.run_id)
    path = node.release_path(acc.release["sha256"])
    token = path.read_bytes()
    with pytest.raises(ValueError):
        np.load(io.BytesIO(token), allow_pickle=False)
    assert scan([path.parent]) == []
    key = read_key_file(run.key_file).derive(RELEASE_KEY_CONTEXT)
    assert np.load(io.BytesIO(key.decrypt(token)), allow_pickle=False).files  # sealed, intact
    spent = _spent(run, "client-0000")

    forged = FernetKey.generate().derive(RELEASE_KEY_CONTEXT).encrypt(key.decrypt(token))
    forged_sha = hashlib.sha256(forged).hexdigest()
    node.release_path(forged_sha).write_bytes(forged)
    acc.release = {**acc.release, "sha256": forged_sha}
    node.accountants.save(acc)
    again = app(_msg(run, "train", 1), _ctx(0))
    assert again.content["reply"]["status"] == "declined"
    assert len(again.content.array_records) == 0 and _spent(run, "client-0000") == spent


def test_message_settings_are_validated_like_the_coordinators_config(run):
    """A client runs whatever the message's settings say, so it checks their ranges itself."""
    import dataclasses
    import math

    from veilfed.errors import UsageError
    from veilfed.federation.settings import RunSettings

    bad = {
        "delta": 5.0,
        "epsilon": -3.0,
        "max_grad_norm": math.nan,
        "noise_multiplier": math.inf,
        "accountant": "moments",
    }
    for field, value in bad.items():
        forged = dataclasses.replace(
            run, privacy=dataclasses.replace(run.privacy, **{field: value})
        )
        with pytest.raises(UsageError, match=rf"message settings: privacy.*{field}") as err:
            RunSettings.from_json(forged.to_json(), "message settings")
        assert "\n" not in str(err.value)
    fed = dataclasses.replace(run, federated=dataclasses.replace(run.federated, rounds=0))
    with pytest.raises(UsageError, match="rounds must be >= 1"):
        RunSettings.from_json(fed.to_json(), "message settings")
    text = run.to_json().replace('"delta": 0.001', '"delta": "0.001"')
    with pytest.raises(UsageError, match=r"privacy\.delta: expected float"):
        RunSettings.from_json(text, "message settings")
    assert RunSettings.from_json(run.to_json()) == run


def test_client_declines_when_the_next_round_would_exceed_its_budget(run):
    app(_msg(run, "train", 1), _ctx(1))
    app(_msg(run, "train", 2), _ctx(1))  # σ was calibrated for exactly 2 rounds
    reply = app(_msg(run, "train", 3), _ctx(1))
    info = reply.content["reply"]
    assert info["status"] == "declined" and "declining to train" in info["reason"]
    assert "client-0001" in info["reason"] and len(reply.content.array_records) == 0


def test_evaluate_reports_per_task_metrics_on_held_out_clips(run):
    reply = app(_msg(run, "evaluate", 1), _ctx(2))
    metrics = reply.content["metrics"]
    train_ids, eval_ids = _split(run, 2)
    assert metrics["num-examples"] == len(eval_ids) and not set(train_ids) & set(eval_ids)
    assert {"eval/action/accuracy", "eval/moderation/f1"} <= set(metrics)


def test_injected_failures_are_deterministic_and_near_the_rate():
    hits = [injected_failure(0, f"client-{i:04d}", r, 0.3) for i in range(50) for r in range(20)]
    assert 0.25 < sum(hits) / len(hits) < 0.35
    assert hits == [
        injected_failure(0, f"client-{i:04d}", r, 0.3) for i in range(50) for r in range(20)
    ]
    assert not injected_failure(0, "client-0000", 1, 0.0)


def test_non_private_round_has_no_accountant_or_report(tmp_path):
    import math

    settings, tracker = make_run(tmp_path, write_config(tmp_path, clients=2), epsilon=math.inf)
    tracker.finish()
    assert not settings.privacy.enabled
    reply = app(_msg(settings, "train", 1), _ctx(0))
    info = reply.content["reply"]
    assert info["status"] == "trained" and "report" not in info
    assert not (NodeState.in_run(settings.run_dir, "client-0000").dir / "accountant").exists()
    assert math.isfinite(reply.content["metrics"]["train/loss"])


def test_train_batches_survive_an_empty_poisson_batch(run):
    """Opacus rebuilds an empty batch from the first one's structure; string ids crashed it."""
    from opacus.data_loader import wrap_collate_with_empty

    from veilfed.clients.trainer import client_dataset
    from veilfed.train import prime_empty_batches, train_collate

    train_ids, _ = _split(run, 0)
    dataset = client_dataset(run, client_inputs(run, {"partition-id": 0}), train_ids)
    first_empty = wrap_collate_with_empty(collate_fn=train_collate)
    prime_empty_batches(first_empty, dataset)
    empty = first_empty([])  # the very first Poisson batch is empty
    assert isinstance(empty, dict) and empty["video"].shape[0] == 0
    collate = wrap_collate_with_empty(collate_fn=train_collate)
    full = collate([dataset[0]])
    assert "clip_id" not in full and full["video"].shape[0] == 1
    assert collate([])["video"].shape[0] == 0 and set(collate([])) == set(full) == set(empty)


def test_partition_missing_modality_reaches_the_client(run):
    """A client the partition marks as lacking audio trains and evaluates without it."""
    from veilfed.clients.trainer import client_dataset
    from veilfed.federation.rundir import MISSING_FILE, load_missing

    path = Path(run.run_dir) / MISSING_FILE
    before = path.read_text() if path.exists() else None
    try:
        path.write_text(json.dumps({"client-0000": ["audio"]}))
        assert load_missing(run.run_dir) == {"client-0000": ["audio"]}
        inputs = client_inputs(run, {"partition-id": 0})
        ids, _ = split_shard(run, inputs)
        lacking = client_dataset(run, inputs, ids)[0]
        assert lacking["modality_mask"].tolist() == [True, False, True]
        assert not lacking["audio"].any()
        other = client_inputs(run, {"partition-id": 1})
        assert client_dataset(run, other, split_shard(run, other)[0])[0]["modality_mask"][1]
    finally:
        if before is None:
            path.unlink()
        else:
            path.write_text(before)
