"""ClientApp units: called directly with Flower messages (no Ray, no coordinator)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fedtest import make_run, write_config
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from veilfed.clients.client_app import app, injected_failure
from veilfed.clients.inputs import client_inputs
from veilfed.clients.node import NodeState
from veilfed.clients.trainer import initial_arrays, split_shard
from veilfed.privacy.reports import KeyRegistry, SignedReport


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


def test_train_reply_is_signed_cumulative_and_idempotent(run):
    first = app(_msg(run, "train", 1), _ctx(0))
    info = first.content["reply"]
    assert info["status"] == "trained" and info["client-id"] == "client-0000"
    signed = SignedReport.from_json(info["report"])
    report = KeyRegistry(f"{run.run_dir}/keys").verify(signed, "client-0000")
    assert report.round == 1 and report.steps_total == report.steps_round > 0
    metrics = first.content["metrics"]
    assert metrics["num-examples"] == len(_split(run, 0)[0])

    again = app(_msg(run, "train", 1), _ctx(0))  # a re-run of round 1 (resume after a kill)
    assert SignedReport.from_json(again.content["reply"]["report"]).report == report
    for key, arr in first.content["arrays"].items():
        np.testing.assert_array_equal(arr.numpy(), again.content["arrays"][key].numpy())

    third = app(_msg(run, "train", 3), _ctx(0))  # round 2 skipped: history continues from r1
    r3 = SignedReport.from_json(third.content["reply"]["report"]).report
    assert r3.prev_round == 1 and r3.prev_hash == report.digest()
    assert r3.steps_total == 2 * report.steps_total and r3.epsilon > report.epsilon
    state = json.loads(
        (
            NodeState.in_run(run.run_dir, "client-0000").dir / "accountant" / "r000003.json"
        ).read_text()
    )
    assert sum(n for _, _, n in state["history"]) == r3.steps_total


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

    from veilfed.clients.trainer import _dataset, prime_empty_batches, train_collate

    train_ids, _ = _split(run, 0)
    dataset = _dataset(run, client_inputs(run, {"partition-id": 0}), train_ids)
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
    from veilfed.clients.trainer import _dataset
    from veilfed.coordinator.settings import MISSING_FILE, load_missing

    path = Path(run.run_dir) / MISSING_FILE
    before = path.read_text() if path.exists() else None
    try:
        path.write_text(json.dumps({"client-0000": ["audio"]}))
        assert load_missing(run.run_dir) == {"client-0000": ["audio"]}
        inputs = client_inputs(run, {"partition-id": 0})
        ids, _ = split_shard(run, inputs)
        lacking = _dataset(run, inputs, ids)[0]
        assert lacking["modality_mask"].tolist() == [True, False, True]
        assert not lacking["audio"].any()
        other = client_inputs(run, {"partition-id": 1})
        assert _dataset(run, other, split_shard(run, other)[0])[0]["modality_mask"][1]
    finally:
        if before is None:
            path.unlink()
        else:
            path.write_text(before)
