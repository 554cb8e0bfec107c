"""The Flower ServerApp: the federated round loop with screening, budgets and checkpoints.

Flower's ``Strategy.start`` runs rounds without hooks for checkpoint/resume, so the loop is ours
and Flower's strategies do what they are good at: configuring train messages (FedProx's μ, DP
wrappers' clipping) and aggregating the replies we accepted. Per round:

1. sample ``fraction × clients`` among clients that still have budget, with an RNG derived from
   (seed, round) — a resumed run samples exactly what the uninterrupted run would have;
2. send train messages; replies that errored (crash/dropout) count as ``failed``, clients that
   declined for budget are never sampled again, updates with NaN/Inf, wrong tensors, over the
   norm bound or a privacy report that does not verify are ``rejected``; the round goes on;
3. aggregate if at least ``min_fit_clients`` updates were accepted (else keep the model);
4. federated evaluation on the clients' held-out shards;
5. log to MLflow, store signed reports, write the checkpoint atomically.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from veilfed.coordinator import checkpoint as ckpt_io
from veilfed.coordinator.aggregation import screen_update
from veilfed.coordinator.strategies import (
    FixedNodes,
    build_strategy,
    central_epsilon,
    load_strategy_state,
    strategy_state,
)
from veilfed.errors import CheckFailed, UsageError, VeilfedError
from veilfed.federation.keys import (
    ARRAYS_RECORD,
    CLIENT_ID,
    CLIPS,
    CONFIG_RECORD,
    DECRYPT_MS,
    EVAL_EXTRA,
    GLOBAL_KEY,
    HE_KEY_ID,
    MAX_ABS_ERROR,
    REASON,
    REFUSED_MODEL,
    REPLY_KEY,
    REPORT,
    ROUND_KEY,
    SETTINGS_KEY,
    SHADOW_FLAT,
    SHADOW_RECORD,
    SHADOW_WEIGHT,
    SIGNING_KEY,
    STATUS,
    STATUS_DECLINED,
    TRAIN_EXAMPLES,
    TRAIN_LOSS,
    UPDATE_BYTES,
    UPDATE_RECORD,
    WEIGHT_KEY,
    WITHHELD,
)
from veilfed.federation.settings import RunSettings
from veilfed.federation.weights import initial_arrays, to_flat
from veilfed.io import write_text_atomic
from veilfed.privacy.audit_log import COORDINATOR_KEY_ARTIFACT, LOG_ARTIFACT

log = logging.getLogger("veilfed.coordinator")


@dataclass
class RoundLog:
    """What one round did; becomes MLflow metrics and the run's history."""

    round: int
    sampled: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    declined: dict[str, str] = field(default_factory=dict)
    reported: list[str] = field(default_factory=list)  # verified privacy reports (ε spent)
    model_digest: str = ""  # of the global model this round's messages carried
    aggregated: bool = False
    train_loss: float = math.nan
    eval: dict[str, dict[str, float]] = field(default_factory=dict)
    eps: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    he: dict[str, float] = field(default_factory=dict)  # he/* metrics of this round

    def metrics(self, all_eps: dict[str, float], central_eps: float | None) -> dict[str, float]:
        out: dict[str, float] = {
            "round/sampled": len(self.sampled),
            "round/accepted": len(self.accepted),
            "round/failed": len(self.failed),
            "round/rejected": len(self.rejected),
            "round/declined": len(self.declined),
            "round/wall_s": self.wall_s,
            "train/loss": self.train_loss,
        }
        for task, values in self.eval.items():
            for metric, value in values.items():
                out[f"eval/{task}/{metric}"] = value
        finite = [e for e in all_eps.values() if math.isfinite(e)]
        if finite:
            out["privacy/eps_max"] = max(finite)
            out["privacy/eps_mean"] = float(np.mean(finite))
        for cid, eps in self.eps.items():
            out[f"privacy/client/{cid}/eps"] = eps
        if central_eps is not None:
            out["privacy/central_eps"] = central_eps
        out.update(self.he)
        return out


def sample_clients(seed: int, rnd: int, eligible: list[str], k: int) -> list[str]:
    """``k`` of ``eligible`` without replacement, a pure function of (seed, round, eligible)."""
    rng = np.random.default_rng([seed, rnd])
    pool = sorted(eligible)
    picks = rng.choice(len(pool), size=min(k, len(pool)), replace=False)
    return sorted(pool[int(i)] for i in picks)


def discover(
    grid: Grid, settings_json: str, expected: int, timeout: float
) -> dict[str, tuple[int, dict[str, Any]]]:
    """Wait for ``expected`` nodes, then ask each which client it is (node ids are random).

    Client id -> (node id, the client's query reply); two nodes claiming one client is an error.
    """
    deadline = time.monotonic() + timeout
    while len(node_ids := sorted(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise UsageError(
                f"only {len(node_ids)} of {expected} client nodes connected within {timeout:g}s"
            )
        time.sleep(0.2)
    msgs = [
        Message(
            content=RecordDict({CONFIG_RECORD: ConfigRecord({SETTINGS_KEY: settings_json})}),
            message_type=MessageType.QUERY,
            dst_node_id=nid,
        )
        for nid in node_ids
    ]
    found: dict[str, tuple[int, dict[str, Any]]] = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise UsageError(f"node {node}: {reply.error.reason}")
        info = _reply_info(reply)
        cid = str(info.get(CLIENT_ID))
        if cid in found:
            raise UsageError(
                f"nodes {found[cid][0]} and {node} both hold client {cid}'s shard; give each "
                "node its own bundle (`veilfed data export --client ...`)"
            )
        found[cid] = (node, info)
    return found


def _reply_info(reply: Message) -> dict[str, Any]:
    rec = reply.content.config_records.get(REPLY_KEY)
    return dict(rec) if rec is not None else {}


def _weighted(values: Iterable[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """Example-weighted mean of each metric over the replies that report it."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for weight, metrics in values:
        for key, value in metrics.items():
            if weight > 0 and math.isfinite(value):
                sums[key] = sums.get(key, 0.0) + weight * value
                weights[key] = weights.get(key, 0.0) + weight
    return {k: sums[k] / weights[k] for k in sums}


class Coordinator:
    """One simulation's server side: state, round loop, logging and checkpoints."""

    def __init__(
        self,
        grid: Grid,
        settings: RunSettings,
        tracker: Any,
        node_clients: dict[int, str] | None = None,
    ) -> None:
        from veilfed.privacy.report_signing import KeyRegistry

        self.grid = grid
        self.s = settings
        self.fed = settings.federated
        self.tracker = tracker
        self.run_dir = Path(settings.run_dir)
        self.settings_json = settings.to_json()
        # Real nodes: node id -> the client id its auth key is registered as (empty: simulation)
        self.node_clients = dict(node_clients or {})
        self.keys = KeyRegistry(self.run_dir / "keys")
        self.train_examples: dict[str, int] = {}  # admitted clients' n (δ <= 1/n per report)
        self.round_digest = ""
        self.round_log = None
        if settings.privacy.enabled and self.fed.sign_reports:
            from veilfed.privacy.audit_log import RoundLogWriter

            self.round_log = RoundLogWriter(self.run_dir, settings.run_id)
        self.strategy = build_strategy(
            self.fed.strategy,
            sampled_per_round=self.fed.sampled_per_round,
            central_dp=self.fed.central_dp,
            central_noise_multiplier=self.fed.central_noise_multiplier,
            central_clipping_norm=self.fed.central_clipping_norm,
            proximal_mu=self.fed.proximal_mu,
            server_lr=self.fed.server_lr,
            server_tau=self.fed.server_tau,
            trim_beta=self.fed.trim_beta,
        )
        # HE: the public context only (no secret key: it can sum, not decrypt or encrypt), the
        # latest encrypted aggregate (None until round 1 aggregated: then the seeded initial
        # weights, which are public, are sent in plaintext), and on test runs the plaintext
        # FedAvg of the shadow copies for ``he/max_abs_error``.
        self.he_ctx = None
        if settings.he.enabled:
            from veilfed.crypto.he import load_context

            self.he_ctx = load_context(settings.he.public_path, require_secret=False)
        self.he_global: bytes | None
        self.he_previous: bytes | None = None  # this round's predecessor, until it is evaluated
        self.he_shadow: np.ndarray | None = None
        ckpt = ckpt_io.load(self.run_dir)
        if ckpt is None:
            self.round = 0
            self.arrays = initial_arrays(settings)
            self.history: list[dict[str, Any]] = []
            self.clients: dict[str, dict[str, Any]] = {}
            self.exhausted: dict[str, str] = {}
            self.releases = 0
            self.he_global = None
        else:
            self.round = ckpt.round
            self.arrays = ckpt.arrays
            self.history = ckpt.history
            self.clients = ckpt.clients
            self.exhausted = ckpt.exhausted
            self.releases = sum(1 for h in ckpt.history if h["aggregated"])
            self.he_global = ckpt.he_global
            load_strategy_state(self.strategy, ckpt.strategy)
            ckpt_io.restore_rng(ckpt.rng)
            log.info("resuming after round %d", ckpt.round)

    # -- one round ------------------------------------------------------------------------
    def _train(self, rnd: int, node_of: dict[str, int], rlog: RoundLog) -> None:
        from veilfed.federation.digest import model_digest

        # What this round sends (the encrypted aggregate under HE): the clients' reports name it.
        rlog.model_digest = model_digest(
            None if self.he_global is not None else self.arrays, self.he_global
        )
        self.round_digest = rlog.model_digest
        eligible = [c for c in node_of if c not in self.exhausted]
        rlog.sampled = sample_clients(self.s.seed, rnd, eligible, self.fed.sampled_per_round)
        if not rlog.sampled:
            return
        cid_of = {node_of[c]: c for c in rlog.sampled}
        global_rec, config = self._global_message()
        messages = list(
            self.strategy.configure_train(
                rnd,
                global_rec,
                config,
                FixedNodes(sorted(cid_of)),  # type: ignore[arg-type]
            )
        )
        replies = list(self.grid.send_and_receive(messages, timeout=self.fed.round_timeout_s))
        answered = set()
        accepted: list[Message] = []
        losses: list[tuple[float, dict[str, float]]] = []
        for reply in replies:
            cid = cid_of.get(reply.metadata.src_node_id)
            if cid is None:
                continue
            answered.add(cid)
            if reply.has_error():
                rlog.failed[cid] = reply.error.reason
                log.warning("round %d: client %s failed: %s", rnd, cid, reply.error.reason)
                continue
            info = _reply_info(reply)
            if info.get(STATUS) == STATUS_DECLINED:
                rlog.declined[cid] = str(info.get(REASON, "budget exhausted"))
                if info.get(REFUSED_MODEL) is not True:
                    self.exhausted[cid] = rlog.declined[cid]
                log.warning("round %d: %s", rnd, rlog.declined[cid])
                continue
            reason = self._screen(rnd, cid, reply, info, rlog)
            if reason is not None:
                rlog.rejected[cid] = reason
                log.warning("round %d: rejected update of client %s: %s", rnd, cid, reason)
                continue
            accepted.append(reply)
            rlog.accepted.append(cid)
            # Only virtual clients report a training loss; a real node keeps it.
            metrics = dict(next(iter(reply.content.metric_records.values())))
            loss = metrics.get(TRAIN_LOSS)
            if isinstance(loss, int | float) and not isinstance(loss, bool):
                losses.append((float(metrics[WEIGHT_KEY]), {"loss": float(loss)}))
        for cid in set(rlog.sampled) - answered:
            rlog.failed[cid] = "no reply before the round timeout"
        rlog.train_loss = _weighted(losses).get("loss", math.nan)
        if self.he_ctx is not None:
            self._aggregate_encrypted(rnd, accepted, cid_of, rlog)
        elif len(accepted) >= self.fed.min_fit_clients:
            arrays, _ = self.strategy.aggregate_train(rnd, accepted)
            if arrays is not None:
                new = {k: a.numpy() for k, a in arrays.items()}
                # Aggregation may promote dtypes (e.g. int buffers); keep the model's own.
                self.arrays = {
                    k: new[k].astype(v.dtype, copy=False) for k, v in self.arrays.items()
                }
                rlog.aggregated = True
                self.releases += 1
        else:
            log.warning(
                "round %d: %d accepted updates < min_fit_clients %d; global model unchanged",
                rnd,
                len(accepted),
                self.fed.min_fit_clients,
            )

    def _screen(
        self, rnd: int, cid: str, reply: Message, info: dict[str, Any], rlog: RoundLog
    ) -> str | None:
        """Reason to reject this update, or None; privacy report checked before the arrays.

        A verified report counts even if the arrays are then rejected: the client did spend
        that ε, and its report chain must not have a gap.
        """
        if info.get(CLIENT_ID) != cid:
            return f"reply claims to be client {info.get(CLIENT_ID)!r}"
        metrics = list(reply.content.metric_records.values())
        if len(metrics) != 1 or WEIGHT_KEY not in metrics[0]:
            return "reply lacks its training metrics"
        weight = metrics[0][WEIGHT_KEY]
        if not isinstance(weight, int | float) or not math.isfinite(weight) or weight <= 0:
            return f"invalid {WEIGHT_KEY} {weight!r}"
        if self.s.privacy.enabled:
            try:
                self._check_report(rnd, cid, info)
            except VeilfedError as exc:
                return str(exc)
            rlog.reported.append(cid)
        if self.he_ctx is not None:
            return _encrypted_payload_problem(reply)
        arrays = list(reply.content.array_records.values())
        verdict = screen_update(
            arrays[0] if len(arrays) == 1 else None,
            self.arrays,
            self.fed.norm_bound if self.fed.norm_bound > 0 else None,
        )
        return verdict.reason

    def _global_message(self) -> tuple[ArrayRecord, ConfigRecord]:
        """The global model for train/evaluate messages: the encrypted aggregate under HE."""
        config = ConfigRecord({SETTINGS_KEY: self.settings_json})
        if self.he_global is not None:
            config[GLOBAL_KEY] = self.he_global
            return ArrayRecord(), config
        return ArrayRecord({k: _array(v) for k, v in self.arrays.items()}), config

    def _aggregate_encrypted(
        self, rnd: int, accepted: list[Message], cid_of: dict[int, str], rlog: RoundLog
    ) -> None:
        """Sum the accepted ciphertexts (public context only); unsummable ones are rejected.

        The norm bound is enforced by the clients and required here through their attestation.
        """
        from veilfed.crypto.he import aggregate, shadow_average

        assert self.he_ctx is not None
        blobs = {
            cid_of[r.metadata.src_node_id]: r.content[UPDATE_RECORD][UPDATE_BYTES] for r in accepted
        }
        size = sum(int(v.size) for v in self.arrays.values())
        bound = self.fed.norm_bound if self.fed.norm_bound > 0 else None
        agg, rejections = aggregate(self.he_ctx, blobs, expected_size=size, require_max_l2=bound)
        for rej in rejections:
            rlog.rejected[rej.client] = rej.reason
            rlog.accepted.remove(rej.client)
            log.warning("round %d: rejected update of client %s: %s", rnd, rej.client, rej.reason)
        # Clients refuse to decrypt an aggregate of fewer than [he] min_contributors clients.
        needed = max(self.fed.min_fit_clients, self.s.he.min_contributors)
        if agg is None or len(rlog.accepted) < needed:
            log.warning(
                "round %d: %d accepted updates < %d (min_fit_clients, [he] min_contributors); "
                "global model unchanged",
                rnd,
                len(rlog.accepted),
                needed,
            )
            return
        wire = [len(bytes(blobs[c])) for c in rlog.accepted]
        self.he_previous = self.he_global
        self.he_global = agg.to_bytes()
        rlog.aggregated = True
        self.releases += 1
        rlog.he = {
            "he/encrypt_ms": agg.encrypt_ms,
            "he/aggregate_ms": agg.aggregate_ms,
            "he/bytes_ratio": float(np.mean(wire)) / (4 * size),
            "he/ciphertext_bytes": float(np.mean(wire)),
            "he/plaintext_bytes": float(4 * size),
            "he/aggregate_bytes": float(len(self.he_global)),
        }
        self.he_shadow = None
        if self.s.he.shadow:
            kept = [r for r in accepted if cid_of[r.metadata.src_node_id] in rlog.accepted]
            try:
                flats = [
                    to_flat(self.s, {k: a.numpy() for k, a in r.content[ARRAYS_RECORD].items()})
                    for r in kept
                ]
                weights = [
                    int(next(iter(r.content.metric_records.values()))[SHADOW_WEIGHT]) for r in kept
                ]
            except (KeyError, ValueError) as exc:  # a shadow copy is missing: no error metric
                log.warning("round %d: no HE shadow aggregate (%s)", rnd, exc)
                return
            self.he_shadow = shadow_average(flats, weights)

    def _check_report(self, rnd: int, cid: str, info: dict[str, Any]) -> None:
        from veilfed.privacy.report_schema import PrivacyReport, SignedReport

        raw = info.get(REPORT)
        if not isinstance(raw, str):
            raise CheckFailed(f"client {cid}: update has no privacy report; refused")
        if self.fed.sign_reports:
            signed = SignedReport.from_json(raw, f"client {cid} round {rnd} report")
            report = self.keys.verify(signed, cid)
        else:
            try:
                data = json.loads(raw)
            except ValueError:
                raise CheckFailed(f"client {cid}: privacy report is not JSON; refused") from None
            report = PrivacyReport.from_dict(data, f"client {cid} round {rnd} report")
        self._check_binding(rnd, cid, report)
        budget = self.s.privacy.epsilon_budget
        if report.epsilon > budget * (1 + 1e-9):
            raise CheckFailed(
                f"client {cid}: reported epsilon {report.epsilon:.4g} exceeds budget {budget:g}"
            )
        entry = self.clients.setdefault(cid, {"rounds": 0})
        entry.update(
            epsilon=report.epsilon,
            delta=report.delta,
            noise_multiplier=report.noise_multiplier,
            sample_rate=report.sample_rate,
            steps=report.steps_total,
            max_grad_norm=report.max_grad_norm,
            accountant=report.accountant,
            rounds=entry["rounds"] + 1,
            report=raw,
        )

    def _check_binding(self, rnd: int, cid: str, report: Any) -> None:
        """The report names this run, round and model, and the run's δ and accountant."""
        who = f"client {cid} round {rnd}"
        p = self.s.privacy
        if report.run_id != self.s.run_id:
            raise CheckFailed(f"{who}: report is for run {report.run_id}, not {self.s.run_id}")
        if report.round != rnd:
            raise CheckFailed(f"client {cid}: report is for round {report.round}, not {rnd}")
        if report.model_digest != self.round_digest:
            raise CheckFailed(f"{who}: report names another global model than this round's")
        if report.delta != p.delta:
            raise CheckFailed(f"{who}: report delta {report.delta:g} is not the run's {p.delta:g}")
        n = self.train_examples.get(cid, 0)
        if n > 0 and report.delta > 1 / n:
            raise CheckFailed(f"{who}: report delta {report.delta:g} > 1/n = {1 / n:.3g}")
        if report.accountant != p.accountant:
            raise CheckFailed(
                f"{who}: report accounted with {report.accountant}, the run uses {p.accountant}"
            )

    def _log_settings(self) -> None:
        """The signed round log's first entry: the privacy settings the audit pins."""
        from veilfed.privacy.signing import key_id

        if self.round_log is None:
            return
        p = self.s.privacy
        budget = p.epsilon_budget
        keys = self.keys.public_keys()
        clients = {
            cid: {"n": n, "key_id": key_id(keys[cid]) if cid in keys else None}
            for cid, n in sorted(self.train_examples.items())
        }
        text = self.round_log.settings(
            {
                "delta": p.delta,
                "epsilon_budget": budget if math.isfinite(budget) else None,
                "accountant": p.accountant,
                "clients": clients,
            }
        )
        self.tracker.log_text(self.round_log.public_pem.decode("ascii"), COORDINATOR_KEY_ARTIFACT)
        self._upload_round_log(text)

    def _upload_round_log(self, text: str) -> None:
        self.tracker.log_text(text, LOG_ARTIFACT)

    def _evaluate(self, rnd: int, node_of: dict[str, int], rlog: RoundLog) -> None:
        pool = sorted(node_of)
        chosen = sample_clients(self.s.seed + 1, rnd, pool, self.fed.evaluated_per_round)
        arrays, config = self._global_message()
        config[ROUND_KEY] = rnd
        content = RecordDict({ARRAYS_RECORD: arrays, CONFIG_RECORD: config})
        if self.he_shadow is not None and self.he_global is not None:
            content[SHADOW_RECORD] = ArrayRecord({SHADOW_FLAT: _array(self.he_shadow)})
        msgs = [
            Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=node_of[c])
            for c in chosen
        ]
        cid_of = {node_of[c]: c for c in chosen}
        results: list[tuple[float, dict[str, float]]] = []
        decrypt_ms: list[float] = []
        errors: list[float] = []
        refused: list[str] = []
        accepted_model = 0  # replies whose client accepted the global model
        for reply in self.grid.send_and_receive(msgs, timeout=self.fed.round_timeout_s):
            cid = cid_of.get(reply.metadata.src_node_id)
            if cid is None:
                continue
            if reply.has_error():
                log.warning("round %d: evaluation by %s failed: %s", rnd, cid, reply.error.reason)
                continue
            info = _reply_info(reply)
            if info.get(STATUS) == STATUS_DECLINED:
                reason = str(info.get(REASON, "declined"))
                log.warning("round %d: evaluation: %s", rnd, reason)
                if info.get(REFUSED_MODEL) is True:
                    refused.append(cid)
                else:
                    accepted_model += 1
                continue
            parsed = _eval_metrics(reply)
            if isinstance(parsed, str):
                log.warning("round %d: evaluation reply of %s rejected: %s", rnd, cid, parsed)
                continue
            weight, metrics = parsed
            accepted_model += 1
            if DECRYPT_MS in metrics:
                decrypt_ms.append(metrics.pop(DECRYPT_MS))
            if MAX_ABS_ERROR in metrics:
                errors.append(metrics.pop(MAX_ABS_ERROR))
            results.append((weight, metrics))
        for key, value in _weighted(results).items():
            _, task, metric = key.split("/", 2)
            rlog.eval.setdefault(task, {})[metric] = value
        if decrypt_ms:
            rlog.he["he/decrypt_ms"] = float(np.mean(decrypt_ms))
        if errors:
            rlog.he["he/max_abs_error"] = max(errors)
        if self.he_ctx is not None and rlog.aggregated and refused and not accepted_model:
            self._discard_aggregate(rnd, rlog)

    def _discard_aggregate(self, rnd: int, rlog: RoundLog) -> None:
        """Every evaluating client refused this round's aggregate (its decryption failed the
        integrity check: an update under a forged key id or tampered beyond the header checks
        was summed; or it sums fewer contributors than the clients' floor). It cannot be
        attributed to a client, so the round is discarded and the previous global model kept,
        instead of every later round failing on it."""
        log.warning(
            "round %d: clients refused the encrypted aggregate (integrity check or contributor "
            "floor); discarding the round and keeping the previous global model",
            rnd,
        )
        self.he_global = self.he_previous
        self.he_shadow = None
        self.releases -= 1
        rlog.aggregated = False
        rlog.he["he/discarded"] = 1.0

    def _admit(self, found: dict[str, tuple[int, dict[str, Any]]]) -> dict[str, int]:
        """Check every client before round 1; client id -> node id.

        What only the nodes know is checked here, naming the client: a real node presents the
        shard of the client its auth key is registered as, not another's; its shard has a held-out
        part and δ < 1/n for its n training examples; its report signing key (registered on
        first contact, then pinned for the run: a node that comes back with another key is
        refused); under HE it encrypts with the keys whose public context this coordinator
        holds, and the round's total weight fits them.
        """
        train: dict[str, int] = {}
        for cid, (node, info) in sorted(found.items()):
            if self.node_clients and self.node_clients.get(node) != cid:
                owner = self.node_clients.get(node)
                raise UsageError(
                    f"client {cid}: its shard is on node {node}, which authenticates as "
                    + (f"{owner}" if owner else "a key not in --auth-keys")
                    + f"; start client {cid}'s node with its own auth key ({cid}.key)"
                )
            clips, n = int(info.get(CLIPS, 0)), int(info.get(TRAIN_EXAMPLES, 0))
            if clips < 2:
                raise UsageError(
                    f"client {cid}: shard has {clips} clip(s); each client needs >= 2 (train + "
                    "held-out); export it a bigger bundle"
                )
            train[cid] = n
            self.train_examples[cid] = n
            if self.s.privacy.enabled:
                try:
                    self.s.privacy.validate(n, f"client {cid}: privacy")
                except UsageError as exc:
                    raise UsageError(f"{exc}; lower [privacy] delta in the config") from None
            if self.s.privacy.enabled and self.fed.sign_reports:
                pem = info.get(SIGNING_KEY)
                if not isinstance(pem, str):
                    raise UsageError(f"client {cid}: offered no report signing key")
                self.keys.register(cid, pem.encode())
            if self.he_ctx is not None and info.get(HE_KEY_ID) != self.he_ctx.key_id:
                theirs = info.get(HE_KEY_ID)
                raise UsageError(
                    f"client {cid}: "
                    + (f"encrypts with HE keys {theirs}" if theirs else "has no HE context")
                    + f", this coordinator's public context is {self.he_ctx.key_id}; start the "
                    "node with --he-context set to the secret.ctx of the same `veilfed he keygen`"
                )
        if self.he_ctx is not None and sum(train.values()) > self.he_ctx.params.max_total_weight:
            raise UsageError(
                f"HE keys sum at most {self.he_ctx.params.max_total_weight} examples a round, the "
                f"clients hold {sum(train.values())}; regenerate them with a larger "
                "--max-total-weight"
            )
        return {cid: node for cid, (node, _) in found.items()}

    def run(self) -> None:
        found = discover(self.grid, self.settings_json, self.fed.clients, self.fed.round_timeout_s)
        missing = self.fed.clients - len(found)
        if missing:
            raise UsageError(f"{missing} of {self.fed.clients} clients did not answer discovery")
        node_of = self._admit(found)
        self._log_settings()
        for rnd in range(self.round + 1, self.fed.rounds + 1):
            if all(c in self.exhausted for c in node_of):
                log.warning("round %d: every client has spent its budget; stopping", rnd)
                break
            start = time.perf_counter()
            rlog = RoundLog(rnd)
            self._train(rnd, node_of, rlog)
            self._evaluate(rnd, node_of, rlog)
            rlog.eps = {c: self.clients[c]["epsilon"] for c in rlog.reported}
            self._finish_round(rlog, start)
        if self.round_log is not None:
            self._upload_round_log(self.round_log.end(self.round))

    def _finish_round(self, rlog: RoundLog, start: float) -> None:
        self._log_reports(rlog)
        if self.round_log is not None:
            self._upload_round_log(
                self.round_log.round(
                    {
                        "round": rlog.round,
                        "model_digest": rlog.model_digest,
                        "sampled": sorted(rlog.sampled),
                        "reported": sorted(rlog.reported),
                        "accepted": sorted(rlog.accepted),
                        "aggregated": rlog.aggregated,
                    }
                )
            )
        rlog.wall_s = time.perf_counter() - start  # train + evaluate + report logging
        all_eps = {c: float(v["epsilon"]) for c, v in self.clients.items()}
        central = (
            central_epsilon(self.fed.central_noise_multiplier, self.releases, self.s.privacy.delta)
            if self.fed.central_dp != "off"
            else None
        )
        record = {
            "round": rlog.round,
            "metrics": rlog.metrics(all_eps, central),
            "aggregated": rlog.aggregated,
            "failed": rlog.failed,
            "rejected": rlog.rejected,
            "declined": rlog.declined,
            "sampled": rlog.sampled,
        }
        self.history.append(record)
        self.tracker.log_metrics(record["metrics"], step=rlog.round)
        self.round = rlog.round
        ckpt_io.save(
            self.run_dir,
            ckpt_io.Checkpoint(
                round=self.round,
                arrays=self.arrays,
                strategy=strategy_state(self.strategy),
                rng=ckpt_io.rng_state(),
                history=self.history,
                clients=self.clients,
                exhausted=self.exhausted,
                he_global=self.he_global,
            ),
        )
        log.info(
            "round %d: sampled %d, accepted %d, failed %d, rejected %d, declined %d (%.1fs)",
            rlog.round,
            len(rlog.sampled),
            len(rlog.accepted),
            len(rlog.failed),
            len(rlog.rejected),
            len(rlog.declined),
            rlog.wall_s,
        )

    def _log_reports(self, rlog: RoundLog) -> None:
        """Store this round's verified reports as MLflow artifacts for ``veilfed audit``.

        Same layout as ``veilfed.privacy.reports.log_reports`` (``privacy/reports/<id>.jsonl``,
        ascending round; ``privacy/keys/<id>.pub``), but each client's chain is kept in the run
        directory and all of a round's files go up in one call: reading every chain back from
        MLflow each round costs ~0.5 s per client, which dominated 100-client rounds.
        """
        if not (self.s.privacy.enabled and self.fed.sign_reports and rlog.reported):
            return
        from veilfed.privacy.report_schema import KEYS_DIR, REPORTS_DIR, SignedReport

        chains = self.run_dir / "reports"
        with tempfile.TemporaryDirectory() as tmp:
            staged, keys = Path(tmp) / "reports", Path(tmp) / "keys"
            staged.mkdir()
            keys.mkdir()
            for cid in rlog.reported:
                path = chains / f"{cid}.jsonl"
                lines: dict[int, str] = {}
                if path.exists():
                    for line in path.read_text(encoding="utf-8").splitlines():
                        lines[SignedReport.from_json(line).report.round] = line
                else:
                    (keys / f"{cid}.pub").write_bytes(self.keys.path(cid).read_bytes())
                signed = SignedReport.from_json(self.clients[cid]["report"])
                lines[signed.report.round] = signed.to_json()  # a re-run round replaces itself
                text = "".join(lines[r] + "\n" for r in sorted(lines))
                write_text_atomic(path, text)
                (staged / f"{cid}.jsonl").write_text(text, encoding="utf-8")
            self.tracker.log_artifacts(staged, REPORTS_DIR)
            if any(keys.iterdir()):
                self.tracker.log_artifacts(keys, KEYS_DIR)


def _eval_metrics(reply: Message) -> tuple[float, dict[str, float]] | str:
    """(weight, metrics) of an evaluate reply, or why it is rejected (never an exception).

    One MetricRecord: a positive ``num-examples``, then only ``eval/<task>/<metric>`` and
    ``EVAL_EXTRA`` entries, each a finite number.
    """
    records = list(reply.content.metric_records.values())
    if len(records) != 1:
        return f"{len(records)} metric records, expected 1"
    metrics = dict(records[0])
    weight = metrics.pop(WEIGHT_KEY, None)
    if not _finite_number(weight) or weight <= 0:
        return f"invalid {WEIGHT_KEY} {weight!r}"
    out: dict[str, float] = {}
    for key, value in metrics.items():
        parts = key.split("/", 2)
        named = key in EVAL_EXTRA or (len(parts) == 3 and parts[0] == "eval" and all(parts))
        if not named:
            return f"unexpected metric {key!r}"
        if not _finite_number(value):
            return f"metric {key!r} is not a finite number ({value!r})"
        out[key] = float(value)
    return float(weight), out


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _encrypted_payload_problem(reply: Message) -> str | None:
    """Why an HE reply carries no ciphertext to sum (None: it does; ``aggregate`` parses it)."""
    he = reply.content.config_records.get(UPDATE_RECORD)
    if he is not None and WITHHELD in he:
        return f"client withheld its update: {he[WITHHELD]}"
    if he is not None and isinstance(he.get(UPDATE_BYTES), bytes):
        return None
    if reply.content.array_records:
        return "sent a plaintext update but HE is required"
    return "no encrypted update in the reply"


def _array(value: np.ndarray) -> Any:
    from flwr.app import Array

    return Array(np.ascontiguousarray(value))


def make_server_app(run_dir: str | Path, tracker: Any) -> ServerApp:
    """A ServerApp bound to a prepared run directory and its open MLflow run."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        Coordinator(grid, RunSettings.load(run_dir), tracker).run()

    return app


# ``flwr run .``: the run is prepared from [tool.flwr.app.config] inside the ServerApp.
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from veilfed.coordinator.run import run_from_flwr_config

    run_from_flwr_config(grid, dict(context.run_config))
