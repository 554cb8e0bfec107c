"""Update compressors: exact hand cases, error feedback, summability for secure aggregation."""

from __future__ import annotations

import numpy as np
import pytest

from veilfed.compress import COMPRESSIONS, payload_bytes
from veilfed.errors import UsageError


def update(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(64, 32)).astype(np.float32), rng.normal(size=(32,)).astype(np.float32)]


def test_topk_hand_case_and_error_feedback() -> None:
    u = [np.array([3.0, -1.0, 0.5, 2.0], dtype=np.float32)]
    topk = COMPRESSIONS.build("topk", fraction=0.25)
    assert topk.decompress(topk.compress(u))[0].tolist() == [3.0, 0.0, 0.0, 0.0]
    # the residual [0, -1, .5, 2] is added, so the next round sends index 3 (2 + 2 = 4)
    assert topk.decompress(topk.compress(u))[0].tolist() == [0.0, 0.0, 0.0, 4.0]
    no_ef = COMPRESSIONS.build("topk", fraction=0.25, error_feedback=False)
    no_ef.compress(u)
    assert no_ef.decompress(no_ef.compress(u))[0].tolist() == [3.0, 0.0, 0.0, 0.0]


def test_topk_error_feedback_tracks_the_sum() -> None:
    u = update()
    ef, plain = (COMPRESSIONS.build("topk", fraction=0.05, error_feedback=e) for e in (True, False))
    sent_ef = sum(
        np.concatenate([a.ravel() for a in ef.decompress(ef.compress(u))]) for _ in range(40)
    )
    sent = sum(
        np.concatenate([a.ravel() for a in plain.decompress(plain.compress(u))]) for _ in range(40)
    )
    truth = 40 * np.concatenate([a.ravel() for a in u])
    # error feedback loses nothing: what was sent plus what is still owed is exactly the sum
    assert np.allclose(sent_ef + ef.residual, truth, atol=1e-3)
    assert np.linalg.norm(sent_ef - truth) < 0.35 * np.linalg.norm(sent - truth)


def test_topk_report_ratio_error_and_shapes() -> None:
    u = update()
    topk = COMPRESSIONS.build("topk", fraction=0.1)
    report = topk.report(u)
    assert report.ratio > 4.5  # 10% of values + uint32 indices: 8 bytes for 40
    assert 0 < report.extra["rel_error"] < 1
    assert topk.residual is None  # report does not disturb the client's residual
    back = topk.decompress(topk.compress(u))
    assert [a.shape for a in back] == [a.shape for a in u]
    assert [a.dtype for a in back] == [np.float32, np.float32]
    exact = COMPRESSIONS.build("topk", fraction=1.0)
    assert all(
        np.array_equal(a, b) for a, b in zip(exact.decompress(exact.compress(u)), u, strict=True)
    )


def test_randk_is_summable_across_clients() -> None:
    a, b = update(1), update(2)
    ca, cb = (COMPRESSIONS.build("randk", fraction=0.2, seed=7) for _ in range(2))
    pa, pb = ca.compress(a), cb.compress(b)
    assert "indices" not in pa
    summed = {**pa, "values": pa["values"] + pb["values"]}  # what the coordinator adds
    server = COMPRESSIONS.build("randk", fraction=0.2, seed=7)
    agg = server.decompress(summed)
    parts = [x + y for x, y in zip(ca.decompress(pa), cb.decompress(pb), strict=True)]
    assert all(np.allclose(x, y) for x, y in zip(agg, parts, strict=True))


def test_int8_error_bound_unbiased_and_small() -> None:
    u = update()
    q = COMPRESSIONS.build("int8_update", seed=0)
    payload = q.compress(u)
    back = q.decompress(payload)
    for orig, rec, s in zip(u, back, payload["scales"], strict=True):
        assert np.abs(orig - rec).max() <= s + 1e-6
    assert payload_bytes(payload) < 0.3 * sum(a.nbytes for a in u)
    mean = np.mean([q.decompress(q.compress(u))[0] for _ in range(200)], axis=0)
    assert np.abs(mean - u[0]).max() < 0.25 * payload["scales"][0]  # stochastic rounding
    assert q.report(u).extra["rel_error"] < 0.02


def test_int8_shared_scale_codes_add_up() -> None:
    a, b = update(1), update(2)
    scale = 5.0 / 127
    q = COMPRESSIONS.build("int8_update", scale=scale, seed=0)
    pa, pb = q.compress(a), q.compress(b)
    codes = pa["q.0"].astype(np.int32) + pb["q.0"].astype(np.int32)  # sum of ciphertexts
    assert np.abs(codes * scale - (a[0] + b[0])).max() <= 2 * scale + 1e-6
    assert q.decompress(pa)[1].shape == (32,)


def test_update_compressor_errors() -> None:
    with pytest.raises(UsageError, match="fraction"):
        COMPRESSIONS.build("topk", fraction=0)
    topk = COMPRESSIONS.build("topk", fraction=0.5)
    topk.compress(update())
    with pytest.raises(UsageError, match="update size changed"):
        topk.compress([np.zeros(3, dtype=np.float32)])
