from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping
from flwr.supercore.task_identity import TaskIdentity

from veilfed.config import parse_config
from veilfed.coordinator.rounds import sample_clients
from veilfed.coordinator.strategies import (
    STRATEGIES,
    FixedNodes,
    build_strategy,
    central_epsilon,
    check_strategy,
    load_strategy_state,
    strategy_state,
)
from veilfed.errors import UsageError


def _replies(values: list[float], weights: list[int]) -> list[Message]:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    out = []
    for i, (v, w) in enumerate(zip(values, weights, strict=True)):
        ins = Message(
            RecordDict({"config": ConfigRecord()}), message_type="train", dst_node_id=i + 1
        )
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(np.full(2, v, np.float32))}),
                "metrics": MetricRecord({"num-examples": w, "unit-weight": 1}),
            }
        )
        out.append(Message(content, reply_to=ins))
    return out


def _aggregate(name: str, values: list[float], weights: list[int], **kw) -> float:
    strategy = build_strategy(name, sampled_per_round=len(values), **kw)
    start = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    list(strategy.configure_train(1, start, ConfigRecord(), FixedNodes(range(1, 4))))
    arrays, _ = strategy.aggregate_train(1, _replies(values, weights))
    return float(arrays["w"].numpy()[0])


def test_fedavg_is_sample_weighted():
    assert math.isclose(_aggregate("fedavg", [0.0, 3.0], [1, 2]), 2.0, rel_tol=1e-6)


def test_median_and_trimmed_mean_resist_an_outlier():
    assert _aggregate("median", [1.0, 1.2, 1000.0], [1, 1, 1]) == pytest.approx(1.2)
    assert _aggregate(
        "trimmed_mean", [1.0, 1.2, 1.1, 0.9, 1000.0], [1] * 5, trim_beta=0.2
    ) == pytest.approx(1.1)


def test_fixed_nodes_configure_exactly_the_sampled_nodes():
    strategy = build_strategy("fedprox", sampled_per_round=2, proximal_mu=0.5)
    msgs = list(
        strategy.configure_train(
            3,
            ArrayRecord({"w": Array(np.zeros(1, np.float32))}),
            ConfigRecord(),
            FixedNodes([5, 9]),
        )
    )
    assert sorted(m.metadata.dst_node_id for m in msgs) == [5, 9]
    assert msgs[0].content["config"]["proximal-mu"] == 0.5


def test_fedadam_state_roundtrips_through_a_checkpoint():
    a = build_strategy("fedadam", sampled_per_round=2)
    start = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    list(a.configure_train(1, start, ConfigRecord(), FixedNodes([1, 2])))
    a.aggregate_train(1, _replies([1.0, 2.0], [1, 1]))
    state = strategy_state(a)
    b = build_strategy("fedadam", sampled_per_round=2)
    load_strategy_state(b, state)
    np.testing.assert_array_equal(a.m_t["w"], b.m_t["w"])
    np.testing.assert_array_equal(a.v_t["w"], b.v_t["w"])


def test_central_dp_wrapper_and_its_epsilon():
    s = build_strategy(
        "fedavg",
        sampled_per_round=3,
        central_dp="fixed",
        central_noise_multiplier=1.0,
        central_clipping_norm=0.5,
    )
    assert isinstance(s, DifferentialPrivacyServerSideFixedClipping)
    assert s.strategy.weighted_by_key == "unit-weight"
    assert central_epsilon(1.0, 0, 1e-5) == 0.0
    assert 0 < central_epsilon(2.0, 3, 1e-5) < central_epsilon(2.0, 6, 1e-5)


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_strategy_contract(name):
    """Every registered rule, built from its defaults: it configures exactly the nodes the loop
    sampled, keeps the model when every client returns it unchanged (a fixed point of any
    aggregation), and its learned state survives a checkpoint."""
    strategy = build_strategy(name, sampled_per_round=3)
    start = ArrayRecord({"w": Array(np.full(2, 0.5, np.float32))})
    msgs = list(strategy.configure_train(1, start, ConfigRecord(), FixedNodes([4, 7, 9])))
    assert sorted(m.metadata.dst_node_id for m in msgs) == [4, 7, 9]
    arrays, _ = strategy.aggregate_train(1, _replies([0.5, 0.5, 0.5], [1, 2, 3]))
    np.testing.assert_allclose(arrays["w"].numpy(), np.full(2, 0.5), rtol=1e-6)
    state = strategy_state(strategy)
    restored = build_strategy(name, sampled_per_round=3)
    load_strategy_state(restored, state)
    again = strategy_state(restored)
    assert [sorted(s) for s in again] == [sorted(s) for s in state]
    for mine, theirs in zip(state, again, strict=True):
        for key, value in mine.items():
            np.testing.assert_equal(theirs[key], value)


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("strategy", "fedsgd", "unknown"),
        ("fraction", 0.0, "(0, 1]"),
        ("fraction", 1.5, "(0, 1]"),
        ("min_fit_clients", 9, "min_fit_clients"),
        ("clients", 0, "clients"),
        ("failure_rate", 1.0, "failure_rate"),
        ("bogus", 1, "unknown field"),
    ],
)
def test_bad_federated_config_is_one_line(field, value, needle):
    with pytest.raises(UsageError) as err:
        table = {"federated": {"clients": 8, "fraction": 0.5, field: value}}
        check_strategy(parse_config(table, "exp.toml").federated.strategy)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_sampling_is_a_pure_function_of_seed_and_round():
    pool = [f"c{i}" for i in range(10)]
    a = sample_clients(1, 3, pool, 4)
    assert a == sample_clients(1, 3, list(reversed(pool)), 4)
    assert len(set(a)) == 4
    assert any(sample_clients(1, r, pool, 4) != a for r in range(4, 9))
    assert sample_clients(1, 3, ["x"], 4) == ["x"]
