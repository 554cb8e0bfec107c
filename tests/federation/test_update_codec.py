"""Compressed updates on the wire: each method round-trips, and a payload that lies is refused."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from veilfed.errors import CheckFailed, UsageError
from veilfed.federation import update_codec
from veilfed.federation.sections import UPDATE_COMPRESSIONS, FederatedConfig, HEConfig

METHODS = [m for m in UPDATE_COMPRESSIONS if m != "none"]


def _model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "w": rng.normal(size=(40, 30)).astype(np.float32),
        "b": rng.normal(size=(30,)).astype(np.float32),
        "steps": np.array(5, dtype=np.int64),  # an integer buffer travels whole
    }


def _trained(start: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {k: v + rng.normal(scale=0.01, size=v.shape).astype(v.dtype) for k, v in start.items()
           if v.dtype.kind == "f"}  # fmt: skip
    return {**out, "steps": np.array(9, dtype=np.int64)}


def _fed(method: str, **kw) -> FederatedConfig:
    return FederatedConfig(update_compression=method, **kw)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_round_trips_against_the_global_model(method) -> None:
    rng = np.random.default_rng(0)
    start = _model(rng)
    trained = _trained(start, rng)
    fed = _fed(method, update_fraction=0.2, update_scale=0.001 if method == "int8_update" else 0)
    payload = update_codec.encode(update_codec.for_round(fed, 7, 3), start, trained)
    # The coordinator builds its own codec from the same settings, seed and round.
    back = update_codec.decode(update_codec.for_round(fed, 7, 3), payload, start)
    assert list(back) == list(start) and back["steps"] == 9
    assert all(back[k].dtype == start[k].dtype and back[k].shape == start[k].shape for k in start)
    sent = sum(np.asarray(a).nbytes for a in payload.values())
    dense = sum(a.nbytes for a in start.values())
    assert sent < 0.45 * dense, (method, sent, dense)
    delta = np.concatenate([(trained[k] - start[k]).ravel() for k in ("b", "w")])
    got = np.concatenate([(back[k] - start[k]).ravel() for k in ("b", "w")])
    if method == "topk":  # the kept coordinates are exact, and they are the largest
        kept = got != 0
        assert kept.sum() == int(np.ceil(0.2 * delta.size))
        np.testing.assert_allclose(got[kept], delta[kept], atol=1e-6)
        assert np.abs(delta[kept]).min() >= np.abs(delta[~kept]).max()
    elif method == "randk":
        assert (got != 0).sum() == int(np.ceil(0.2 * delta.size))
    else:  # stochastic rounding: within one step of the shared scale
        assert np.abs(got - delta).max() <= 0.001 + 1e-6


def test_randk_coordinates_are_shared_per_round_and_change_between_rounds() -> None:
    rng = np.random.default_rng(1)
    start = _model(rng)
    fed = _fed("randk", update_fraction=0.1)

    def kept(seed: int, rnd: int) -> np.ndarray:
        payload = update_codec.encode(update_codec.for_round(fed, seed, rnd), start,
                                      _trained(start, rng))  # fmt: skip
        back = update_codec.decode(update_codec.for_round(fed, seed, rnd), payload, start)
        return np.flatnonzero(np.concatenate([(back[k] - start[k]).ravel() for k in ("b", "w")]))

    assert np.array_equal(kept(7, 2), kept(7, 2))  # two clients of one round fill the same slots
    assert not np.array_equal(kept(7, 2), kept(7, 3))
    with pytest.raises(CheckFailed):  # no indices travel: a payload of another size is refused
        update_codec.decode(
            update_codec.for_round(_fed("randk", update_fraction=0.2), 7, 2),
            update_codec.encode(update_codec.for_round(fed, 7, 2), start, _trained(start, rng)),
            start,
        )


def _lies(method: str, payload: dict[str, np.ndarray]) -> list[tuple[str, dict, str]]:
    """(what, forged payload, expected message) for a payload of ``method``."""
    lies = [
        ("an extra field", {**payload, "smuggled": np.zeros(3, np.float32)}, "unexpected field"),
        ("another model", {**payload, "dims": payload["dims"] + 1}, "'dims' does not describe"),
    ]
    if method == "topk":
        idx = payload["indices"].copy()
        idx[-1] = 10**6
        lies.append(("an index out of range", {**payload, "indices": idx}, "stay below"))
        dup = payload["indices"].copy()
        dup[1] = dup[0]
        lies.append(("a repeated index", {**payload, "indices": dup}, "increase strictly"))
    if method in ("topk", "randk"):
        many = np.concatenate([payload["values"], payload["values"]])
        lies.append(("more values than k", {**payload, "values": many}, "'values' must be"))
        nan = payload["values"].copy()
        nan[0] = np.nan
        lies.append(("a NaN", {**payload, "values": nan}, "non-finite"))
        lies.append(("a false size", {**payload, "size": payload["size"] * 2}, "'size' must be"))
    if method == "int8_update":
        q = payload["q.0"].copy()
        q.flat[0] = -128
        lies.append(("an out-of-range code", {**payload, "q.0": q}, "int8 codes in [-127, 127]"))
        scaled = {**payload, "scales": payload["scales"] * 1000}
        lies.append(("its own scale", scaled, "the run's shared scale"))
    return lies


@pytest.mark.parametrize("method", METHODS)
def test_a_payload_that_lies_is_refused_with_what_is_wrong(method) -> None:
    rng = np.random.default_rng(2)
    start = _model(rng)
    fed = _fed(method, update_fraction=0.2, update_scale=0.001 if method == "int8_update" else 0)
    payload = update_codec.encode(update_codec.for_round(fed, 7, 1), start, _trained(start, rng))
    for what, forged, message in _lies(method, payload):
        with pytest.raises(CheckFailed, match=re.escape(message)):
            update_codec.decode(update_codec.for_round(fed, 7, 1), forged, start)
            pytest.fail(what)
    missing = {k: v for k, v in payload.items() if k != "raw/steps"}
    with pytest.raises(CheckFailed, match="missing field 'raw/steps'"):
        update_codec.decode(update_codec.for_round(fed, 7, 1), missing, start)


def test_settings_are_checked_and_he_refuses_compression() -> None:
    assert update_codec.for_round(FederatedConfig(), 0, 1) is None
    for field, value, message in (
        ("update_compression", "zip", "update_compression 'zip': use one of none, topk"),
        ("update_fraction", 0.0, "update_fraction must be in (0, 1]"),
        ("update_scale", -1.0, "update_scale must be >= 0"),
    ):
        with pytest.raises(UsageError, match=re.escape(message)):
            FederatedConfig.from_dict({field: value})
    he = dataclasses.replace(HEConfig(), enabled=True, min_contributors=1)
    with pytest.raises(UsageError, match="incompatible with HE"):
        he.check_compatible(_fed("int8_update", clients=4, fraction=1.0), "federated")
