"""Error feedback between rounds: sealed at rest, replay-stable, and it delivers what it held."""

from __future__ import annotations

import numpy as np

from veilfed.clients.update_wire import ResidualStore, encode_release
from veilfed.crypto.keys import FernetKey
from veilfed.federation import update_codec
from veilfed.federation.sections import FederatedConfig

FED = FederatedConfig(update_compression="topk", update_fraction=0.1)


def _decoded(payload, start):
    back = update_codec.decode(update_codec.for_round(FED, 0, 1), payload, start)
    return back["w"] - start["w"]


def test_error_feedback_delivers_the_whole_update_over_rounds(tmp_path) -> None:
    key = FernetKey.generate()
    store = ResidualStore(tmp_path, key)
    start = {"w": np.zeros(200, np.float32)}
    delta = np.random.default_rng(0).normal(size=200).astype(np.float32)
    sent = np.zeros(200, np.float32)
    for rnd in range(1, 31):  # the same update every round: feedback sends all of it eventually
        codec = update_codec.for_round(FED, 0, rnd)
        payload = encode_release(codec, store, "run1", rnd, start, {"w": start["w"] + delta})
        sent += _decoded(payload, start)
    residual = store.load("run1", 31)
    np.testing.assert_allclose(sent + residual, 30 * delta, rtol=1e-4, atol=1e-3)
    assert np.abs(residual).max() < np.abs(30 * delta).max() / 5  # nothing waits forever


def test_a_run_id_cannot_name_a_path(tmp_path) -> None:
    """The run id is the coordinator's to choose: a hostile one must not reach other files."""
    store = ResidualStore(tmp_path / "state", FernetKey.generate())
    victim = tmp_path / "state" / "release" / "c0" / "abc.enc"
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"the node's stored release")
    start = {"w": np.zeros(10, np.float32)}
    for run_id in ("../release/c0/abc", str(tmp_path / "outside"), "a/../../b"):
        codec = update_codec.for_round(FED, 0, 1)
        encode_release(codec, store, run_id, 1, start, {"w": np.ones(10, np.float32)})
    assert victim.read_bytes() == b"the node's stored release"
    assert not (tmp_path / "outside.enc").exists()
    files = list((tmp_path / "state" / "residual").iterdir())
    assert len(files) == 3 and all(len(f.stem) == 64 for f in files)


def test_a_replayed_round_sends_the_same_payload_and_the_file_is_sealed(tmp_path) -> None:
    key = FernetKey.generate()
    store = ResidualStore(tmp_path, key)
    start = {"w": np.zeros(100, np.float32)}
    rng = np.random.default_rng(1)
    first = {"w": rng.normal(size=100).astype(np.float32)}
    encode_release(update_codec.for_round(FED, 0, 1), store, "r", 1, start, first)
    second = {"w": rng.normal(size=100).astype(np.float32)}
    a = encode_release(update_codec.for_round(FED, 0, 2), store, "r", 2, start, second)
    b = encode_release(update_codec.for_round(FED, 0, 2), store, "r", 2, start, second)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    (sealed_file,) = (tmp_path / "residual").iterdir()
    assert not sealed_file.read_bytes().startswith(b"PK")  # not a plain .npz
    assert ResidualStore(tmp_path, FernetKey.generate()).load("r", 3) is None  # another key
    assert store.load("other-run", 3) is None
    # An earlier round than the stored one starts from zero and leaves the stored state alone.
    kept = store.load("r", 3)
    encode_release(update_codec.for_round(FED, 0, 1), store, "r", 1, start, first)
    np.testing.assert_array_equal(store.load("r", 3), kept)
    # A residual shaped for another model restarts feedback instead of failing the round.
    wide = {"w": np.zeros(300, np.float32)}
    codec = update_codec.for_round(FED, 0, 3)
    payload = encode_release(codec, store, "r", 3, wide, {"w": np.ones(300, np.float32)})
    assert payload["values"].size == 30
