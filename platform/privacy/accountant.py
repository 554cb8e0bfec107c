"""One client's lifetime privacy accountant: every DP-SGD step it ever spent, and its report links.

A client's ε must cover *every* round it joined, not just the current one, so its history grows
across rounds, runs and restarts (``accountant_store.py`` keeps it on the node).
:class:`ClientAccountant` wraps an Opacus accountant (``rdp`` by default; ``prv`` or ``gdp`` by
name) whose ``history`` of ``mechanism.Segment`` is all any accountant needs.

Invariants of the state (:meth:`ClientAccountant.state_dict`; :meth:`~ClientAccountant.
load_state_dict` refuses anything else with a one-line ``UsageError`` naming the field):

* ``version`` is ``STATE_VERSION`` and ``client_id`` is the accountant's own id;
* ``mechanism`` is the accountant the history was kept with (one of ``mechanism.MECHANISMS``);
  loading with another accountant is refused unless the caller recomposes (the segments are the
  same Poisson-sampled Gaussian steps whichever accountant bounds them);
* ``history`` is a list of segments ``[σ, q, steps]`` (``mechanism.check_segment``) in the order
  they were spent; it only grows, and floats round-trip exactly through JSON;
* ``reported_steps`` is an integer in [0, steps in ``history``]: the steps the last signed report
  covered;
* ``last_round`` (integer or null) and ``last_report_hash`` (string) link the next report of the
  chain used when no run is selected; ``runs`` maps each run id to its own link (same fields) and
  ``release`` (null, or the run's last released update: ``run_id``, ``round``, ``model``,
  ``sha256``);
* ``delta`` is null or the δ in (0, 1) a real node's spending is accounted at.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from veilfed.errors import UsageError
from veilfed.privacy.ids import check_client_id
from veilfed.privacy.mechanism import MECHANISMS, Segment, check_mechanism, check_segment, merge

if TYPE_CHECKING:
    from opacus.accountants import IAccountant

STATE_VERSION = 1


def _chain() -> dict[str, Any]:
    return {"last_round": None, "last_report_hash": "", "release": None}


def _check_link(link: Any, where: str) -> dict[str, Any]:
    """Validate one chain link and its release record as read from a state file."""
    if not isinstance(link, dict):
        raise UsageError(f"{where}: must be an object")
    last_round, report_hash = link.get("last_round"), link.get("last_report_hash")
    if last_round is not None and (isinstance(last_round, bool) or not isinstance(last_round, int)):
        raise UsageError(f"{where}: field 'last_round' must be an integer or null")
    if not isinstance(report_hash, str):
        raise UsageError(f"{where}: field 'last_report_hash' must be a string")
    release = link.get("release")
    if release is not None and not (
        isinstance(release, dict)
        and isinstance(release.get("round"), int)
        and all(isinstance(release.get(k), str) for k in ("run_id", "model", "sha256"))
    ):
        raise UsageError(f"{where}: field 'release' must name run_id, round, model and sha256")
    return {"last_round": last_round, "last_report_hash": report_hash, "release": release}


class ClientAccountant:
    """One client's cumulative accountant plus the link to its last signed report.

    ``last_round`` and ``last_report_hash`` let the next report point at the previous one (hash
    chain, see ``report_chain.py``); a chain is per run (:meth:`select_run`), while the history
    and ``reported_steps`` compose over every run. ``release`` names the selected run's last
    released update (``veilfed.clients.node_state``). ``delta`` is the δ a real node's spending is
    accounted at, pinned at its first DP release (``veilfed.clients.policy``; None until then, and
    for virtual clients). All of it persists with the history.
    """

    def __init__(self, client_id: str, mechanism: str = "rdp") -> None:
        if mechanism not in MECHANISMS:
            raise UsageError(
                f"client {client_id}: unknown accountant {mechanism!r}; use one of "
                + ", ".join(MECHANISMS)
            )
        self.client_id = check_client_id(client_id)
        from opacus.accountants import create_accountant  # imports torch: only when used

        self.opacus: IAccountant = create_accountant(mechanism=mechanism)
        self.reported_steps: int = 0
        self.run_id: str | None = None  # the run whose report chain and release are in use
        self.runs: dict[str, dict[str, Any]] = {}  # run id -> its chain link and last release
        self._solo: dict[str, Any] = _chain()  # the chain when no run is selected
        self.delta: float | None = None  # the pinned accounting δ of a real node

    def select_run(self, run_id: str) -> None:
        """Use ``run_id``'s report chain and release record: chains are per run, while the
        history (and so ε and ``reported_steps``) keeps composing across runs."""
        if not isinstance(run_id, str) or not run_id:
            raise UsageError(f"client {self.client_id}: run id must be a non-empty string")
        self.run_id = run_id
        self.runs.setdefault(run_id, _chain())

    def _link(self) -> dict[str, Any]:
        return self._solo if self.run_id is None else self.runs[self.run_id]

    @property
    def last_round(self) -> int | None:
        """The last round reported in the selected run (None before its first report)."""
        return self._link()["last_round"]

    @last_round.setter
    def last_round(self, value: int | None) -> None:
        self._link()["last_round"] = value

    @property
    def last_report_hash(self) -> str:
        return self._link()["last_report_hash"]

    @last_report_hash.setter
    def last_report_hash(self, value: str) -> None:
        self._link()["last_report_hash"] = value

    @property
    def release(self) -> dict[str, Any] | None:
        """The selected run's last release as the node stored it (round, model, SHA-256)."""
        return self._link()["release"]

    @release.setter
    def release(self, value: dict[str, Any] | None) -> None:
        self._link()["release"] = value

    @property
    def mechanism(self) -> str:
        return self.opacus.mechanism()

    @property
    def history(self) -> list[Segment]:
        """``(noise_multiplier, sample_rate, steps)`` segments in the order they were spent."""
        return [(float(s), float(q), int(n)) for s, q, n in self.opacus.history]

    @property
    def total_steps(self) -> int:
        return sum(n for _, _, n in self.opacus.history)

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` DP-SGD steps, merging with the last segment like Opacus does."""
        seg = check_mechanism((noise_multiplier, sample_rate, steps), f"client {self.client_id}")
        if seg[2] == 0:
            return
        hist = self.opacus.history
        if hist and tuple(hist[-1][:2]) != seg[:2] and self.mechanism == "gdp":
            raise UsageError(
                f"client {self.client_id}: the gdp accountant needs a constant noise multiplier "
                "and sample rate; use accountant 'rdp' or 'prv'"
            )
        hist[:] = merge(hist, seg)

    def epsilon(self, delta: float) -> float:
        """Cumulative ε at ``delta`` over the whole history (0 before the first step)."""
        if not 0 < delta < 1:
            raise UsageError(f"client {self.client_id}: delta must be in (0, 1) (got {delta!r})")
        if not self.opacus.history:
            return 0.0
        return float(self.opacus.get_epsilon(delta))

    def refusal(
        self,
        budget: float,
        delta: float,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
    ) -> str | None:
        """One-line reason to decline spending ``steps`` more steps at (σ, q) because ε would
        exceed ``budget`` at ``delta``; None when it fits the budget."""
        after = self._after(noise_multiplier, sample_rate, steps).epsilon(delta)
        if after <= budget:
            return None
        return (
            f"client {self.client_id}: declining to train: {steps} more steps at "
            f"noise_multiplier={noise_multiplier:g}, sample_rate={sample_rate:g} would raise "
            f"epsilon from {self.epsilon(delta):.4g} to {after:.4g} > budget {budget:g} "
            f"(delta={delta:g})"
        )

    def _after(self, noise_multiplier: float, sample_rate: float, steps: int) -> ClientAccountant:
        trial = ClientAccountant(self.client_id, self.mechanism)
        trial.opacus.history = copy.deepcopy(self.opacus.history)
        trial.step(noise_multiplier, sample_rate, steps)
        return trial

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (invariants: module doc)."""
        return {
            "version": STATE_VERSION,
            "client_id": self.client_id,
            "mechanism": self.mechanism,
            "history": [list(seg) for seg in self.history],
            "last_round": self._solo["last_round"],
            "last_report_hash": self._solo["last_report_hash"],
            "reported_steps": self.reported_steps,
            "runs": copy.deepcopy(self.runs),
            "delta": self.delta,
        }

    def load_state_dict(self, state: dict[str, Any], recompose: bool = False) -> None:
        """Replace this accountant's state; every field is validated (one-line errors).

        ``recompose``: accept a history kept with another accountant and compose it with this
        one, so a node keeps one history whatever accountant a run asks for.
        """
        who = f"accountant state for client {self.client_id}"
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise UsageError(f"{who}: not a version {STATE_VERSION} accountant state")
        if state.get("client_id") != self.client_id:
            raise UsageError(f"{who}: belongs to client {state.get('client_id')!r}")
        kept_with = state.get("mechanism")
        if kept_with != self.mechanism and not (recompose and kept_with in MECHANISMS):
            raise UsageError(
                f"{who}: was kept with accountant {kept_with!r}, not "
                f"{self.mechanism!r}; load it with that accountant"
            )
        history = state.get("history")
        if not isinstance(history, list):
            raise UsageError(f"{who}: field 'history' must be a list")
        segments = [check_segment(seg, f"{who}: history[{i}]") for i, seg in enumerate(history)]
        solo = _check_link({k: state.get(k) for k in ("last_round", "last_report_hash")}, who)
        reported = state.get("reported_steps")
        total = sum(n for _, _, n in segments)
        if (
            isinstance(reported, bool)
            or not isinstance(reported, int)
            or not 0 <= reported <= total
        ):
            raise UsageError(f"{who}: field 'reported_steps' must be an integer in [0, {total}]")
        runs = state.get("runs", {})
        if not isinstance(runs, dict):
            raise UsageError(f"{who}: field 'runs' must be an object")
        chains = {
            str(run): _check_link(link, f"{who}: runs[{run!r}]") for run, link in runs.items()
        }
        delta = state.get("delta")
        if delta is not None and (
            isinstance(delta, bool) or not isinstance(delta, float | int) or not 0 < delta < 1
        ):
            raise UsageError(f"{who}: field 'delta' must be null or a number in (0, 1)")
        self.opacus.load_state_dict({"history": segments, "mechanism": self.mechanism})
        self.reported_steps = reported
        self._solo = solo
        self.runs, self.run_id = chains, None
        self.delta = None if delta is None else float(delta)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ClientAccountant:
        if not isinstance(state, dict):
            raise UsageError("accountant state: expected a JSON object")
        acc = cls(str(state.get("client_id")), str(state.get("mechanism")))
        acc.load_state_dict(state)
        return acc
