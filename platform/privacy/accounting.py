"""Cumulative, persisted per-client privacy accounting.

A client's ε must cover *every* round it joined, not just the current one, so the accountant's
history lives on the node (one JSON file per client id, :class:`AccountantStore`) and grows across
rounds, runs and restarts. :class:`ClientAccountant` wraps an Opacus accountant (``rdp`` by default;
``prv`` or ``gdp`` by name) whose ``history`` is the list of ``(noise_multiplier, sample_rate,
steps)`` segments of Poisson-sampled Gaussian steps, which is all any accountant needs.

How the client trainer uses it with Opacus 1.6
----------------------------------------------
``PrivacyEngine.__init__`` creates a fresh accountant (``self.accountant``) and ``make_private``
attaches ``self.accountant``'s optimizer hook to the DPOptimizer *at the time of the call*; each
``optimizer.step()`` then records one step with ``sample_rate = 1 / len(dp_data_loader)`` and the
optimizer's noise multiplier. So swap the accountant in before ``make_private``::

    store = AccountantStore(node_dir / "accountants")
    acc = store.load(client_id, mechanism="rdp")
    plan = plan_round(len(dataset), batch_size, local_epochs)
    sigma = noise_multiplier or calibrate_noise(eps, delta, plan.sample_rate, plan.steps * rounds)
    reason = acc.refusal(budget, delta, sigma, plan.sample_rate, plan.steps)
    if reason:                       # decline the round, tell the coordinator why
        ...
    engine = PrivacyEngine(accountant=acc.mechanism)
    attach(engine, acc)              # engine.accountant is now acc.opacus
    model, opt, loader = engine.make_private(module=..., optimizer=..., data_loader=...,
                                             noise_multiplier=sigma, max_grad_norm=C,
                                             poisson_sampling=True)
    ... train ...                    # every opt.step() lands in acc's history
    report = record_round(acc, round=r, max_grad_norm=C, delta=delta)   # reports.py
    store.save(acc)

Do not use ``make_private_with_epsilon``: it calibrates σ for this round's epochs only, ignoring
the rounds already spent and those still planned; use :func:`calibrate_noise` with the steps of
all planned rounds instead. A trainer that does not use ``PrivacyEngine`` records its steps with
``acc.step(sigma, sample_rate, steps)``.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from veilfed.errors import UsageError
from veilfed.io import write_text_atomic

if TYPE_CHECKING:
    from opacus.accountants import IAccountant

MECHANISMS = ("rdp", "prv", "gdp")
STATE_VERSION = 1
_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_client_id(client_id: str) -> str:
    """Client ids become file and artifact names, so keep them to a safe alphabet."""
    if not isinstance(client_id, str) or not _CLIENT_ID.match(client_id):
        raise UsageError(
            f"client id {client_id!r}: use letters, digits, '_', '.', '-' (max 128 characters)"
        )
    return client_id


def check_mechanism(params: tuple[float, float, int], where: str) -> tuple[float, float, int]:
    """Validate one ``(noise_multiplier, sample_rate, steps)`` segment; ``where`` names it."""
    sigma, rate, steps = params
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not sigma > 0:
        raise UsageError(f"{where}: noise_multiplier must be > 0 (got {sigma!r})")
    if not math.isfinite(sigma):
        raise UsageError(f"{where}: noise_multiplier must be finite (got {sigma!r})")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1:
        raise UsageError(f"{where}: sample_rate must be in (0, 1] (got {rate!r})")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise UsageError(f"{where}: steps must be an integer >= 0 (got {steps!r})")
    return float(sigma), float(rate), steps


def _chain() -> dict[str, Any]:
    return {"last_round": None, "last_report_hash": "", "release": None}


def _check_chain(link: Any, where: str) -> dict[str, Any]:
    """Validate one run's chain link and release record as read from a state file."""
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
    chain, see ``reports.py``); a chain is per run (:meth:`select_run`), while the history and
    ``reported_steps`` compose over every run. ``release`` names the selected run's last released
    update (``veilfed.clients.node_state``). ``delta`` is the δ a real node's spending is accounted
    at, pinned at its first DP release (``veilfed.clients.policy``; None until then, and for
    virtual clients). All of it persists with the history.
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
    def history(self) -> list[tuple[float, float, int]]:
        """``(noise_multiplier, sample_rate, steps)`` segments in the order they were spent."""
        return [(float(s), float(q), int(n)) for s, q, n in self.opacus.history]

    @property
    def total_steps(self) -> int:
        return sum(n for _, _, n in self.opacus.history)

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` DP-SGD steps, merging with the last segment like Opacus does."""
        sigma, rate, steps = check_mechanism(
            (noise_multiplier, sample_rate, steps), f"client {self.client_id}"
        )
        if steps == 0:
            return
        hist = self.opacus.history
        if hist and hist[-1][0] == sigma and hist[-1][1] == rate:
            hist[-1] = (sigma, rate, hist[-1][2] + steps)
        elif hist and self.mechanism == "gdp":
            raise UsageError(
                f"client {self.client_id}: the gdp accountant needs a constant noise multiplier "
                "and sample rate; use accountant 'rdp' or 'prv'"
            )
        else:
            hist.append((sigma, rate, steps))

    def epsilon(self, delta: float) -> float:
        """Cumulative ε at ``delta`` over the whole history (0 before the first step)."""
        if not 0 < delta < 1:
            raise UsageError(f"client {self.client_id}: delta must be in (0, 1) (got {delta!r})")
        if not self.opacus.history:
            return 0.0
        return float(self.opacus.get_epsilon(delta))

    def would_exceed(
        self,
        budget: float,
        delta: float,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
    ) -> bool:
        """Whether spending ``steps`` more steps at (σ, q) would push ε above ``budget``."""
        return self._after(noise_multiplier, sample_rate, steps).epsilon(delta) > budget

    def refusal(
        self,
        budget: float,
        delta: float,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
    ) -> str | None:
        """One-line reason to decline the next round, or None when it fits the budget."""
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
        """JSON-serialisable state; floats round-trip exactly through ``json``."""
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
        one (the segments are the same Poisson-sampled Gaussian steps whichever accountant
        bounds them), so a node keeps one history whatever accountant a run asks for.
        """
        who = f"accountant state for client {self.client_id}"
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise UsageError(f"{who}: not a version {STATE_VERSION} accountant state")
        if state.get("client_id") != self.client_id:
            raise UsageError(f"{who}: belongs to client {state.get('client_id')!r}")
        if recompose and state.get("mechanism") in MECHANISMS:
            pass
        elif state.get("mechanism") != self.mechanism:
            raise UsageError(
                f"{who}: was kept with accountant {state.get('mechanism')!r}, not "
                f"{self.mechanism!r}; load it with that accountant"
            )
        history = state.get("history")
        if not isinstance(history, list):
            raise UsageError(f"{who}: field 'history' must be a list")
        segments = []
        for i, seg in enumerate(history):
            if not isinstance(seg, list | tuple) or len(seg) != 3:
                raise UsageError(f"{who}: history[{i}] must be [noise_multiplier, rate, steps]")
            segments.append(check_mechanism(tuple(seg), f"{who}: history[{i}]"))
        last_round = state.get("last_round")
        if last_round is not None and (
            isinstance(last_round, bool) or not isinstance(last_round, int)
        ):
            raise UsageError(f"{who}: field 'last_round' must be an integer or null")
        report_hash = state.get("last_report_hash")
        if not isinstance(report_hash, str):
            raise UsageError(f"{who}: field 'last_report_hash' must be a string")
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
            str(run): _check_chain(link, f"{who}: runs[{run!r}]") for run, link in runs.items()
        }
        delta = state.get("delta")
        if delta is not None and (
            isinstance(delta, bool) or not isinstance(delta, float | int) or not 0 < delta < 1
        ):
            raise UsageError(f"{who}: field 'delta' must be null or a number in (0, 1)")
        self.opacus.load_state_dict(
            {"history": segments, "mechanism": self.mechanism}  # validated above
        )
        self.reported_steps = reported
        self._solo = {**_chain(), "last_round": last_round, "last_report_hash": report_hash}
        self.runs, self.run_id = chains, None
        self.delta = None if delta is None else float(delta)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ClientAccountant:
        if not isinstance(state, dict):
            raise UsageError("accountant state: expected a JSON object")
        acc = cls(str(state.get("client_id")), str(state.get("mechanism")))
        acc.load_state_dict(state)
        return acc


class AccountantStore:
    """The node's accountants: ``<dir>/<client_id>.json``, each replaced atomically."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, client_id: str) -> Path:
        return self.directory / f"{check_client_id(client_id)}.json"

    def exists(self, client_id: str) -> bool:
        return self.path(client_id).is_file()

    def load(
        self, client_id: str, mechanism: str = "rdp", recompose: bool = False
    ) -> ClientAccountant:
        """The client's accountant, or a fresh one when it has never trained on this node
        (``recompose``: see :meth:`ClientAccountant.load_state_dict`)."""
        path = self.path(client_id)
        acc = ClientAccountant(client_id, mechanism)
        if not path.exists():
            return acc
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(
                f"{path}: cannot read accountant state ({exc}); restore it from a backup — "
                "deleting it would reset this client's privacy spend"
            ) from None
        try:
            acc.load_state_dict(state, recompose=recompose)
        except UsageError as exc:
            raise UsageError(f"{path}: {exc}") from None
        return acc

    def save(self, acc: ClientAccountant) -> Path:
        path = self.path(acc.client_id)
        write_text_atomic(path, json.dumps(acc.state_dict(), sort_keys=True, indent=1) + "\n")
        return path


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    epsilon_tolerance: float = 0.01,
) -> float:
    """Smallest σ (within Opacus' binary search) keeping ``steps`` steps at q within (ε, δ).

    Pass the steps of *all* planned rounds so the cumulative ε stays within the target.
    """
    from opacus.accountants.utils import get_noise_multiplier

    if accountant not in MECHANISMS:
        raise UsageError(f"accountant {accountant!r}: use one of {', '.join(MECHANISMS)}")
    if not target_epsilon > 0 or not 0 < delta < 1:
        raise UsageError(
            f"target epsilon must be > 0 and delta in (0, 1) (got {target_epsilon!r}, {delta!r})"
        )
    check_mechanism((1.0, sample_rate, steps), "calibrate_noise")
    if steps == 0:
        raise UsageError("calibrate_noise: steps must be >= 1")
    try:
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=epsilon_tolerance,
            )
        )
    except ValueError as exc:
        raise UsageError(
            f"cannot reach epsilon={target_epsilon:g} at delta={delta:g} with sample_rate="
            f"{sample_rate:g} over {steps} steps ({exc}); raise epsilon or lower rounds/epochs"
        ) from None


@dataclass(frozen=True)
class RoundPlan:
    """Opacus' Poisson schedule for one round: q = 1 / batches per epoch, steps = epochs / q."""

    sample_rate: float
    steps_per_epoch: int
    steps: int


def plan_round(dataset_size: int, batch_size: int, local_epochs: int) -> RoundPlan:
    """Expected steps of one local round, exactly as ``make_private`` will account them.

    Opacus sets ``sample_rate = 1 / len(data_loader)`` (``ceil(n / batch)`` batches, no
    drop_last) and the Poisson loader yields ``1 / sample_rate`` batches per epoch.
    """
    for name, value in (("dataset_size", dataset_size), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"plan_round: {name} must be a positive integer (got {value!r})")
    if isinstance(local_epochs, bool) or not isinstance(local_epochs, int) or local_epochs < 1:
        raise UsageError(
            f"plan_round: local_epochs must be a positive integer (got {local_epochs!r})"
        )
    per_epoch = math.ceil(dataset_size / batch_size)
    return RoundPlan(
        sample_rate=1 / per_epoch, steps_per_epoch=per_epoch, steps=per_epoch * local_epochs
    )


def attach(privacy_engine: Any, acc: ClientAccountant) -> None:
    """Make ``privacy_engine`` record into ``acc``; call before ``make_private``.

    ``make_private`` hooks whatever ``privacy_engine.accountant`` is at call time, so the
    persisted history keeps growing instead of restarting at zero every round.
    """
    if not hasattr(privacy_engine, "accountant"):
        raise UsageError("attach: expected an opacus.PrivacyEngine")
    privacy_engine.accountant = acc.opacus
