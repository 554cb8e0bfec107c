from __future__ import annotations

import math

import numpy as np
from flwr.app import Array, ArrayRecord

from veilfed.coordinator.aggregation import screen_update, update_norm

REF = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32), "n": np.zeros((), np.int64)}


def rec(**arrays: np.ndarray) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def test_accepts_matching_update_and_reports_its_norm():
    v = screen_update(rec(w=np.full((2, 3), 1.0, np.float32), b=REF["b"], n=REF["n"]), REF, None)
    assert v.reason is None
    assert math.isclose(v.update_norm, math.sqrt(6))


def test_rejects_nan_inf_shape_dtype_and_missing_tensors():
    bad_nan = rec(w=np.full((2, 3), np.nan, np.float32), b=REF["b"], n=REF["n"])
    assert "non-finite" in screen_update(bad_nan, REF, None).reason
    bad_inf = rec(w=REF["w"], b=np.array([0, np.inf, 0], np.float32), n=REF["n"])
    assert "non-finite" in screen_update(bad_inf, REF, None).reason
    assert (
        "shape"
        in screen_update(
            rec(w=np.zeros((3, 2), np.float32), b=REF["b"], n=REF["n"]), REF, None
        ).reason
    )
    assert (
        "dtype"
        in screen_update(
            rec(w=REF["w"].astype(np.float64), b=REF["b"], n=REF["n"]), REF, None
        ).reason
    )
    assert "missing" in screen_update(rec(w=REF["w"], n=REF["n"]), REF, None).reason
    assert "unexpected" in screen_update(rec(**REF, extra=REF["b"]), REF, None).reason
    assert screen_update(None, REF, None).reason is not None


def test_norm_bound_rejects_only_large_updates():
    small = rec(w=np.full((2, 3), 0.1, np.float32), b=REF["b"], n=REF["n"])
    large = rec(w=np.full((2, 3), 10.0, np.float32), b=REF["b"], n=REF["n"])
    assert screen_update(small, REF, 1.0).reason is None
    assert "exceeds bound" in screen_update(large, REF, 1.0).reason


def test_update_norm_ignores_integer_buffers():
    update = {"w": REF["w"] + 3, "b": REF["b"], "n": np.array(100, np.int64)}
    assert math.isclose(update_norm(update, REF), math.sqrt(6 * 9))
