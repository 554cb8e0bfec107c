"""A client's lifetime accountant and its state file: agreement with Opacus and dp-accounting,
resume, budgets, per-run chains, and the state invariants ``accountant.py`` states."""

from __future__ import annotations

import json

import pytest
from opacus.accountants import RDPAccountant
from testkit.privacy import DELTA, google_rdp

from veilfed.errors import UsageError
from veilfed.privacy.accountant import ClientAccountant
from veilfed.privacy.accountant_store import AccountantStore

# Rounds a client joined: (noise multiplier, sample rate, steps); round 3 repeats round 1.
ROUNDS = [(1.1, 0.05, 40), (1.3, 0.02, 100), (1.1, 0.05, 40)]


def test_cumulative_epsilon_matches_opacus_and_google() -> None:
    acc = ClientAccountant("c0")
    reference = RDPAccountant()
    per_round = []
    for sigma, q, n in ROUNDS:
        acc.step(sigma, q, n)
        for _ in range(n):  # Opacus records one call per optimizer step
            reference.step(noise_multiplier=sigma, sample_rate=q)
        per_round.append(google_rdp([(sigma, q, n)]))
        assert acc.epsilon(DELTA) == reference.get_epsilon(DELTA)
    total = acc.epsilon(DELTA)
    assert acc.total_steps == 180
    assert acc.history == ROUNDS
    assert total == pytest.approx(google_rdp(ROUNDS), rel=0.01)
    assert total > max(per_round) * 1.2  # cumulative, clearly not the last round alone


def test_history_merges_consecutive_identical_segments() -> None:
    acc = ClientAccountant("c0")
    acc.step(1.0, 0.1, 3)
    acc.step(1.0, 0.1, 2)
    acc.step(0.9, 0.1, 1)
    assert acc.history == [(1.0, 0.1, 5), (0.9, 0.1, 1)]
    assert acc.total_steps == 6


def test_state_round_trip_gives_identical_epsilon(tmp_path) -> None:
    acc = ClientAccountant("node-7.a")
    for sigma, q, n in ROUNDS:
        acc.step(sigma, q, n)
    acc.last_round, acc.last_report_hash, acc.reported_steps = 4, "ab" * 32, 180
    restored = ClientAccountant.from_state_dict(json.loads(json.dumps(acc.state_dict())))
    assert restored.epsilon(DELTA) == acc.epsilon(DELTA)
    assert restored.state_dict() == acc.state_dict()

    store = AccountantStore(tmp_path / "acc")
    assert not store.exists("node-7.a")
    assert store.load("node-7.a").total_steps == 0
    store.save(acc)
    loaded = store.load("node-7.a")
    assert loaded.epsilon(DELTA) == acc.epsilon(DELTA)
    assert (loaded.last_round, loaded.reported_steps) == (4, 180)
    loaded.step(1.1, 0.05, 10)  # resumed history keeps growing
    store.save(loaded)
    assert store.load("node-7.a").total_steps == 190
    assert [p.name for p in (tmp_path / "acc").iterdir()] == ["node-7.a.json"]


def test_store_rejects_corrupt_or_mismatched_state(tmp_path) -> None:
    store = AccountantStore(tmp_path)
    acc = ClientAccountant("c1")
    acc.step(1.0, 0.1, 5)
    path = store.save(acc)
    with pytest.raises(UsageError, match="kept with accountant 'rdp'"):
        store.load("c1", mechanism="prv")
    state = json.loads(path.read_text())
    state["history"][0][2] = -3
    path.write_text(json.dumps(state))
    with pytest.raises(UsageError, match=r"c1.json: .*history\[0\]: steps"):
        store.load("c1")
    path.write_text("{not json")
    with pytest.raises(UsageError, match="c1.json: cannot read accountant state"):
        store.load("c1")
    with pytest.raises(UsageError, match="client id"):
        store.path("../evil")


def test_budget_check_declines_with_reason() -> None:
    acc = ClientAccountant("c2")
    acc.step(1.0, 0.05, 100)
    now = acc.epsilon(DELTA)
    after = google_rdp([(1.0, 0.05, 200)])
    budget = (now + after) / 2
    reason = acc.refusal(budget, DELTA, 1.0, 0.05, 100)
    assert reason is not None and reason.startswith("client c2: declining to train")
    assert f"> budget {budget:g}" in reason
    assert acc.refusal(after * 1.01, DELTA, 1.0, 0.05, 100) is None
    assert acc.total_steps == 100  # the trial did not spend anything


def test_other_mechanisms() -> None:
    rdp, prv = ClientAccountant("c3", "rdp"), ClientAccountant("c3", "prv")
    for acc in (rdp, prv):
        acc.step(1.0, 0.05, 100)
    assert 0 < prv.epsilon(DELTA) < rdp.epsilon(DELTA)
    with pytest.warns(UserWarning):
        gdp = ClientAccountant("c3", "gdp")
    gdp.step(1.0, 0.05, 10)
    with pytest.raises(UsageError, match="constant noise multiplier"):
        gdp.step(2.0, 0.05, 10)
    with pytest.raises(UsageError, match="unknown accountant"):
        ClientAccountant("c3", "moments")


def test_chains_are_per_run_while_the_history_composes_across_runs(tmp_path) -> None:
    """A node's accountant is keyed by its client, never by the run id a coordinator sends: a new
    run starts a new report chain but not a new ε."""
    store = AccountantStore(tmp_path)
    acc = store.load("c5")
    acc.select_run("run-a")
    acc.step(1.1, 0.05, 40)
    acc.last_round, acc.last_report_hash, acc.reported_steps = 2, "aa" * 32, 40
    acc.release = {"run_id": "run-a", "round": 2, "model": "m" * 64, "sha256": "s" * 64}
    store.save(acc)
    spent = acc.epsilon(DELTA)

    acc = store.load("c5")
    acc.select_run("run-b")  # a fresh run id: fresh chain, same history
    assert (acc.last_round, acc.last_report_hash, acc.release) == (None, "", None)
    assert acc.epsilon(DELTA) == spent and acc.reported_steps == 40
    acc.step(1.1, 0.05, 40)
    acc.last_round = 1
    store.save(acc)

    acc = store.load("c5")
    acc.select_run("run-a")
    assert acc.last_round == 2 and acc.release is not None and acc.release["round"] == 2
    assert acc.epsilon(DELTA) == pytest.approx(google_rdp([(1.1, 0.05, 80)]), rel=0.01)
    state = json.loads(store.path("c5").read_text())
    state["runs"]["run-a"]["release"] = {"round": 2}
    store.path("c5").write_text(json.dumps(state))
    with pytest.raises(UsageError, match=r"runs\['run-a'\]: field 'release'"):
        store.load("c5")


def test_a_history_kept_with_one_accountant_composes_under_another(tmp_path) -> None:
    store = AccountantStore(tmp_path)
    acc = store.load("c6", "rdp")
    acc.step(1.0, 0.05, 100)
    store.save(acc)
    with pytest.raises(UsageError, match="kept with accountant 'rdp'"):
        store.load("c6", "prv")
    prv = store.load("c6", "prv", recompose=True)
    assert prv.mechanism == "prv" and prv.history == acc.history
    assert 0 < prv.epsilon(DELTA) < acc.epsilon(DELTA)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "not a version 1 accountant state"),
        ({"client_id": "c9"}, "belongs to client 'c9'"),
        ({"mechanism": "moments"}, "was kept with accountant 'moments'"),
        ({"history": {"0": [1.0, 0.1, 5]}}, "field 'history' must be a list"),
        ({"history": [[1.0, 0.1]]}, "history[0] must be [noise_multiplier, rate, steps]"),
        ({"history": [[1.0, 2.0, 5]]}, "history[0]: sample_rate must be in (0, 1]"),
        ({"history": [[float("inf"), 0.1, 5]]}, "history[0]: noise_multiplier must be finite"),
        ({"reported_steps": 6}, "field 'reported_steps' must be an integer in [0, 5]"),
        ({"reported_steps": True}, "field 'reported_steps' must be an integer in [0, 5]"),
        ({"last_round": "3"}, "field 'last_round' must be an integer or null"),
        ({"last_report_hash": None}, "field 'last_report_hash' must be a string"),
        ({"runs": []}, "field 'runs' must be an object"),
        ({"runs": {"r": {"last_report_hash": 1}}}, "runs['r']: field 'last_report_hash'"),
        ({"delta": 1.5}, "field 'delta' must be null or a number in (0, 1)"),
    ],
)
def test_each_state_invariant_is_enforced_on_load(tmp_path, change, message) -> None:
    """A state file breaking one invariant stated in ``accountant.py`` is refused in one line
    naming the file and the field, never replaced by a fresh accountant."""
    store = AccountantStore(tmp_path)
    acc = ClientAccountant("c1")
    acc.step(1.0, 0.1, 5)
    path = store.save(acc)
    path.write_text(json.dumps({**acc.state_dict(), **change}))
    with pytest.raises(UsageError) as err:
        store.load("c1")
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
    assert message in str(err.value)
    assert json.loads(path.read_text()) == {**acc.state_dict(), **change}  # left as found
