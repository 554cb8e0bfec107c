"""Compressed updates through the real ClientApp and round loop: bytes per round are logged,
error feedback persists between rounds, and a payload that lies is rejected."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, Message
from testkit.fed import LocalGrid, make_run, write_config

from veilfed.clients.inputs import client_key
from veilfed.clients.update_wire import ResidualStore
from veilfed.coordinator import checkpoint
from veilfed.coordinator.rounds import Coordinator
from veilfed.data.partition import client_name
from veilfed.federation.rundir import client_dir
from veilfed.federation.weights import initial_arrays


def _run(tmp_path, overrides, tamper=None, rounds=2):
    cfg = write_config(tmp_path, clients=3, rounds=rounds)
    settings, tracker = make_run(tmp_path, cfg, overrides=overrides)
    Coordinator(LocalGrid(3, tamper=tamper), settings, tracker).run()
    return settings, tracker, checkpoint.load(settings.run_dir)


@pytest.mark.parametrize("method", ["topk", "randk", "int8_update"])
def test_compressed_rounds_train_and_log_their_bytes(tmp_path, method) -> None:
    overrides = {"update_compression": method, "update_fraction": 0.05}
    settings, tracker, ckpt = _run(tmp_path, overrides)
    assert ckpt.round == 2 and all(h["aggregated"] for h in ckpt.history)
    assert not any(h["rejected"] for h in ckpt.history)
    ratio = ckpt.history[-1]["metrics"]["comm/ratio"]
    assert ratio < (0.15 if method != "int8_update" else 0.35), ratio
    start = initial_arrays(settings)
    moved = sum(
        float(np.abs(ckpt.arrays[k] - v).sum()) for k, v in start.items() if v.dtype.kind == "f"
    )
    assert moved > 0
    names = set(tracker.client.get_run(tracker.run_id).data.metrics)
    assert {"comm/update_bytes", "comm/dense_bytes", "comm/ratio"} <= names
    if method != "int8_update":  # error feedback: what was left out waits, sealed, for next round
        cid = ckpt.history[-1]["sampled"][0]
        store = ResidualStore(client_dir(settings.run_dir, cid), client_key(settings.key_file))
        residual = store.load(settings.run_id, 3)
        assert residual is not None and np.abs(residual).sum() > 0
        assert b"PK" not in next(store.dir.iterdir()).read_bytes()[:64]  # not a plain .npz


def test_uncompressed_rounds_log_a_ratio_of_one(tmp_path) -> None:
    _, _, ckpt = _run(tmp_path, {}, rounds=1)
    assert ckpt.history[0]["metrics"]["comm/ratio"] == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["none", "topk"])
def test_undecodable_or_misnamed_arrays_are_rejected_and_the_round_goes_on(
    tmp_path, method
) -> None:
    """Bytes that do not deserialize, or the right arrays under another record name, used to
    reach code with no error handling (the wire-size count, Flower's reply consistency check)."""

    def forge(reply: Message) -> Message:
        cid = reply.content["reply"]["client-id"]
        if cid == client_name(1):
            arrays = reply.content["arrays"]
            key = next(iter(arrays))
            arrays[key] = Array(dtype="float32", shape=(1,), stype="numpy.ndarray", data=b"junk")
        if cid == client_name(2):
            reply.content["x"] = reply.content.array_records["arrays"]
            del reply.content["arrays"]
        return reply

    _, _, ckpt = _run(tmp_path, {"update_compression": method}, tamper=forge, rounds=1)
    h = ckpt.history[0]
    assert sorted(h["rejected"]) == [client_name(1), client_name(2)], h["rejected"]
    assert h["rejected"][client_name(2)] == "no model arrays in the reply"
    assert h["aggregated"] and h["metrics"]["round/accepted"] == 1


def test_a_payload_that_lies_is_rejected_and_the_round_goes_on(tmp_path) -> None:
    def forge(reply: Message) -> Message:
        if reply.content["reply"]["client-id"] == client_name(1):
            arrays = reply.content["arrays"]
            idx = arrays["indices"].numpy().copy()
            idx[-1] = np.iinfo(np.uint32).max  # writes past the model if decoded blindly
            arrays["indices"] = Array(idx)
        return reply

    _, _, ckpt = _run(tmp_path, {"update_compression": "topk"}, tamper=forge, rounds=1)
    h = ckpt.history[0]
    assert list(h["rejected"]) == [client_name(1)]
    assert h["rejected"][client_name(1)].startswith("compressed update: 'indices' must increase")
    assert h["aggregated"] and h["metrics"]["round/accepted"] == 2
