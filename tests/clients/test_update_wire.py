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
    sealed = (tmp_path / "residual" / "r.enc").read_bytes()
    assert not sealed.startswith(b"PK")  # not a plain .npz
    assert ResidualStore(tmp_path, FernetKey.generate()).load("r", 3) is None  # another key
    assert store.load("other-run", 3) is None
    # A residual shaped for another model restarts feedback instead of failing the round.
    wide = {"w": np.zeros(300, np.float32)}
    codec = update_codec.for_round(FED, 0, 3)
    payload = encode_release(codec, store, "r", 3, wide, {"w": np.ones(300, np.float32)})
    assert payload["values"].size == 30
