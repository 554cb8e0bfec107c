"""A client's report chain in one run: recording reports, and every chain invariant checked."""

from __future__ import annotations

from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from testkit.privacy import DELTA, digest, make_chain

from veilfed.errors import UsageError
from veilfed.privacy.accountant import ClientAccountant
from veilfed.privacy.report_chain import check_chain, record_round


def _record(acc, rnd, run_id="run-a", **kw):
    return record_round(
        acc, run_id=run_id, round=rnd, model_digest=digest(run_id, rnd), max_grad_norm=1.0,
        delta=DELTA, **kw,
    )  # fmt: skip


def test_record_round_links_reports_and_reports_cumulative_epsilon() -> None:
    acc = ClientAccountant("c0")
    acc.step(1.1, 0.05, 30)
    first = _record(acc, 1, epsilon_budget=8.0)
    assert (first.steps_round, first.steps_total, first.prev_round, first.prev_hash) == (
        30,
        30,
        None,
        "",
    )
    assert (first.run_id, first.model_digest, first.prior) == ("run-a", digest("run-a", 1), ())
    assert first.orders is not None and first.orders[0] == 1.1 and first.orders[-1] == 63.0
    acc.step(1.1, 0.05, 30)
    second = _record(acc, 4)
    assert (second.steps_round, second.steps_total, second.prev_round) == (30, 60, 1)
    assert second.prev_hash == first.digest()
    assert second.epsilon == acc.epsilon(DELTA) > first.epsilon
    assert (second.noise_multiplier, second.sample_rate, second.accountant) == (1.1, 0.05, "rdp")
    with pytest.raises(UsageError, match="no DP-SGD steps since the last report"):
        _record(acc, 5)
    with pytest.raises(UsageError, match="round must be after the last reported round 4"):
        acc.step(1.1, 0.05, 5)
        _record(acc, 4)
    acc.step(1.3, 0.05, 5)
    with pytest.raises(UsageError, match="changed within the round"):
        _record(acc, 5)


def test_first_report_of_a_run_declares_the_prior_spend() -> None:
    """A node's accountant composes across runs: the new run's chain starts fresh, and its
    first report declares what was spent before, so the audit recomputes all of it."""
    acc = ClientAccountant("c0")
    acc.select_run("run-a")
    acc.step(1.1, 0.05, 30)
    _record(acc, 1)
    acc.select_run("run-b")
    acc.step(0.9, 0.05, 10)
    first_b = _record(acc, 1, run_id="run-b")
    assert (first_b.prev_round, first_b.prev_hash) == (None, "")
    assert first_b.prior == ((1.1, 0.05, 30),)
    assert first_b.steps_total == 40 and first_b.epsilon == acc.epsilon(DELTA)
    assert check_chain([first_b]) == []
    with pytest.raises(UsageError, match="chain is for run run-b, not run-a"):
        acc.step(0.9, 0.05, 10)
        _record(acc, 2, run_id="run-a")


def test_chain_accepts_rounds_with_gaps() -> None:
    reports = make_chain("c0", Ed25519PrivateKey.generate(), [1, 3, 4, 9])
    assert check_chain(list(reversed(reports))) == []


def test_chain_problems_name_client_and_round() -> None:
    reports = make_chain("c0", Ed25519PrivateKey.generate(), [1, 3, 4, 9])
    missing = check_chain(reports[:1] + reports[2:])
    assert [str(p) for p in missing] == [
        "client c0 round 4: links to round 3 but the previous report is round 1: "
        "a report is missing or out of place",
        "client c0 round 4: steps_total 60 != previous total 20 + steps_round 20",
    ]
    assert [p.round for p in check_chain(reports[1:])] == [3]
    edited = replace(reports[1].report, steps_round=15)
    problems = check_chain([reports[0], edited, *reports[2:]])
    assert [(p.round, p.reason.split(" ")[0]) for p in problems] == [
        (3, "steps_total"),
        (4, "prev_hash"),
    ]
    consistent = replace(edited, steps_total=35)
    problems = check_chain([reports[0], consistent, *reports[2:]])
    assert [(p.round, p.reason.split(" ")[0]) for p in problems] == [
        (4, "prev_hash"),
        (4, "steps_total"),
    ]
    other = make_chain("c1", Ed25519PrivateKey.generate(), [5])
    assert any("belongs to client c1" in str(p) for p in check_chain(reports + other))


@pytest.mark.parametrize(
    ("forge", "problem"),
    [
        (  # the link names the right round but not the bytes of its report
            lambda r: [r[0], replace(r[1], prev_hash="0" * 64), r[2]],
            "round 2: prev_hash does not match the report of round 1",
        ),
        (  # a later report may not bring in spend from before the run
            lambda r: [r[0], replace(r[1], prior=((1.0, 0.5, 1),), steps_total=41), r[2]],
            "round 2: declares prior spend but is not the first report of the run",
        ),
        (  # a first report that links back to a round whose report is gone
            lambda r: r[1:],
            "round 2: links to round 1, whose report is missing",
        ),
        (  # a first report without a link whose total hides earlier steps
            lambda r: [replace(r[1], prev_round=None, prev_hash="")],
            "round 2: first report but steps_total 40 != prior 0 + steps_round 20",
        ),
        (  # a total that is not the previous total plus this round's steps
            lambda r: [r[0], r[1], replace(r[2], steps_total=r[2].steps_total - 1)],
            "round 3: steps_total 59 != previous total 40 + steps_round 20",
        ),
        (  # a report of another run spliced into this run's chain
            lambda r: [r[0], replace(r[1], run_id="run-b"), r[2]],
            "round 2: report is for run run-b, the chain's first for run run-a",
        ),
        (  # one round reported twice
            lambda r: [r[0], r[1], replace(r[1], epsilon=r[1].epsilon / 2), r[2]],
            "round 2: two reports for the same round",
        ),
    ],
)
def test_each_chain_invariant_is_enforced(forge, problem) -> None:
    """Each chain invariant stated in ``report_schema.py``: a chain forged against it (by a client
    that signs whatever it likes) is refused, naming the round and the broken rule."""
    reports = [s.report for s in make_chain("c0", Ed25519PrivateKey.generate(), [1, 2, 3])]
    assert check_chain(reports) == []
    found = [str(p) for p in check_chain(forge(reports))]
    assert any(p.startswith(f"client c0 {problem}") for p in found), found
