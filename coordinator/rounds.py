"""The federated round loop with screening, budgets and checkpoints.

Flower's ``Strategy.start`` runs rounds without hooks for checkpoint/resume, so the loop is ours
and Flower's strategies do what they are good at: configuring train messages (FedProx's μ, DP
wrappers' clipping) and aggregating the replies we accepted. Before round 1 every client is
found and admitted (``admission``). Per round:

1. sample ``fraction × clients`` among clients that still have budget, with an RNG derived from
   (seed, round): a resumed run samples exactly what the uninterrupted run would have;
2. send train messages; replies that errored (crash/dropout) count as ``failed``, clients that
   declined for budget are never sampled again, updates with NaN/Inf, wrong tensors, over the
   norm bound (``aggregation``) or a privacy report that does not verify (``report_checks``)
   are ``rejected``; the round goes on;
3. aggregate if at least ``min_fit_clients`` updates were accepted (else keep the model); under
   HE sum the ciphertexts instead (``secure_sum``);
4. federated evaluation on the clients' held-out shards (``evaluation``), folded into the best
   round by ``[train] select_metric`` (``best``);
5. log to MLflow and store signed reports (``tracking``), write the checkpoint atomically;
6. stop early after ``[train] patience`` evaluations without improvement.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from veilfed.coordinator import checkpoint as ckpt_io
from veilfed.coordinator.admission import Found, admit, discover, reply_info
from veilfed.coordinator.aggregation import screen_reply
from veilfed.coordinator.best import BestRound
from veilfed.coordinator.evaluation import evaluate
from veilfed.coordinator.report_checks import ReportChecks
from veilfed.coordinator.round_record import RoundLog, weighted
from veilfed.coordinator.secure_sum import SecureSum, payload_problem
from veilfed.coordinator.strategies import (
    FixedNodes,
    build_strategy,
    central_epsilon,
    load_strategy_state,
    strategy_state,
)
from veilfed.coordinator.tracking import RunTracking
from veilfed.errors import UsageError, VeilfedError
from veilfed.federation import update_codec
from veilfed.federation.digest import model_digest
from veilfed.federation.keys import (
    ARRAYS_RECORD,
    CLIENT_ID,
    CONFIG_RECORD,
    GLOBAL_KEY,
    REASON,
    REFUSED_MODEL,
    ROUND_KEY,
    SETTINGS_KEY,
    SHADOW_FLAT,
    SHADOW_RECORD,
    STATUS,
    STATUS_DECLINED,
    TRAIN_LOSS,
    WEIGHT_KEY,
)
from veilfed.federation.settings import RunSettings
from veilfed.federation.weights import experiment, initial_arrays
from veilfed.privacy.report_signing import KeyRegistry

log = logging.getLogger("veilfed.coordinator")


def sample_clients(seed: int, rnd: int, eligible: list[str], k: int) -> list[str]:
    """``k`` of ``eligible`` without replacement, a pure function of (seed, round, eligible)."""
    rng = np.random.default_rng([seed, rnd])
    pool = sorted(eligible)
    picks = rng.choice(len(pool), size=min(k, len(pool)), replace=False)
    return sorted(pool[int(i)] for i in picks)


class Coordinator:
    """One run's server side on a Flower grid: state, round loop, logging and checkpoints.

    ``node_clients``: node id -> the client id its auth key is registered as (real nodes; None
    in a simulation). A checkpoint in the run directory is resumed from.
    """

    def __init__(
        self,
        grid: Grid,
        settings: RunSettings,
        tracker: Any,
        node_clients: dict[int, str] | None = None,
    ) -> None:
        self.grid = grid
        self.s = settings
        self.fed = settings.federated
        self.specs = experiment(settings).model.task_specs()
        self.run_dir = Path(settings.run_dir)
        self.settings_json = settings.to_json()
        self.node_clients = dict(node_clients or {})
        self.keys = KeyRegistry(self.run_dir / "keys")
        self.reports = ReportChecks(settings, self.keys)
        self.tracking = RunTracking(settings, tracker, self.keys)
        self.round_digest = ""
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
        ckpt = ckpt_io.load(self.run_dir)
        self.round = ckpt.round if ckpt else 0
        self.arrays = ckpt.arrays if ckpt else initial_arrays(settings)
        self.history: list[dict[str, Any]] = ckpt.history if ckpt else []
        self.clients: dict[str, dict[str, Any]] = ckpt.clients if ckpt else {}
        self.exhausted: dict[str, str] = ckpt.exhausted if ckpt else {}
        self.releases = sum(1 for h in self.history if h["aggregated"])
        he_global = ckpt.he_global if ckpt else None
        self.secure = SecureSum(settings, he_global) if settings.he.enabled else None
        self.best = BestRound(settings, ckpt.best if ckpt else None)
        if ckpt is not None:
            load_strategy_state(self.strategy, ckpt.strategy)
            log.info("resuming after round %d", ckpt.round)

    @property
    def he_ctx(self) -> Any:
        """The public HE context (None without HE)."""
        return self.secure.ctx if self.secure is not None else None

    @property
    def he_global(self) -> bytes | None:
        """The encrypted global model (None without HE and before the first HE aggregate)."""
        return self.secure.aggregate if self.secure is not None else None

    def _admit(self, found: Found) -> dict[str, int]:
        """Admit every discovered client (``admission.admit``); client id -> node id."""
        train = admit(found, self.s, self.keys, self.secure, self.node_clients)
        self.reports.train_examples.update(train)
        return {cid: node for cid, (node, _) in found.items()}

    def run(self) -> None:
        found = discover(self.grid, self.settings_json, self.fed.clients, self.fed.round_timeout_s)
        missing = self.fed.clients - len(found)
        if missing:
            raise UsageError(f"{missing} of {self.fed.clients} clients did not answer discovery")
        node_of = self._admit(found)
        self.tracking.start(self.reports.train_examples)
        for rnd in range(self.round + 1, self.fed.rounds + 1):
            if all(c in self.exhausted for c in node_of):
                log.warning("round %d: every client has spent its budget; stopping", rnd)
                break
            if self.best.should_stop:
                break
            start = time.perf_counter()
            rlog = RoundLog(rnd)
            self._train(rnd, node_of, rlog)
            self._evaluate(rnd, node_of, rlog)
            rlog.eps = {c: self.clients[c]["epsilon"] for c in rlog.reported}
            self.best.update(rnd, rlog.eval, self.arrays, self.he_global)
            self._finish_round(rlog, start)
        self.tracking.end(self.round)

    # -- one round ------------------------------------------------------------------------
    def _global_message(self) -> tuple[ArrayRecord, ConfigRecord]:
        """The global model for train/evaluate messages: the encrypted aggregate under HE."""
        config = ConfigRecord({SETTINGS_KEY: self.settings_json})
        if self.he_global is not None:
            config[GLOBAL_KEY] = self.he_global
            return ArrayRecord(), config
        arrays = {k: Array(np.ascontiguousarray(v)) for k, v in self.arrays.items()}
        return ArrayRecord(arrays), config

    def _train(self, rnd: int, node_of: dict[str, int], rlog: RoundLog) -> None:
        # What this round sends (the encrypted aggregate under HE): the clients' reports name it.
        he_global = self.he_global
        rlog.model_digest = model_digest(None if he_global is not None else self.arrays, he_global)
        self.round_digest = rlog.model_digest
        eligible = [c for c in node_of if c not in self.exhausted]
        rlog.sampled = sample_clients(self.s.seed, rnd, eligible, self.fed.sampled_per_round)
        if not rlog.sampled:
            return
        cid_of = {node_of[c]: c for c in rlog.sampled}
        global_rec, config = self._global_message()
        rlog.dense_bytes = sum(len(a.data) for a in global_rec.values())  # whole weights, sent
        nodes = FixedNodes(sorted(cid_of))
        messages = list(self.strategy.configure_train(rnd, global_rec, config, nodes))  # type: ignore[arg-type]
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
            info = reply_info(reply)
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
        rlog.train_loss = weighted(losses).get("loss", math.nan)
        self._aggregate(rnd, accepted, cid_of, rlog)

    def _aggregate(
        self, rnd: int, accepted: list[Message], cid_of: dict[int, str], rlog: RoundLog
    ) -> None:
        if self.secure is not None:
            size = sum(int(v.size) for v in self.arrays.values())
            rlog.aggregated = self.secure.sum(rnd, accepted, cid_of, size, rlog)
        elif len(accepted) >= self.fed.min_fit_clients:
            arrays, _ = self.strategy.aggregate_train(rnd, accepted)
            if arrays is not None:
                new = {k: a.numpy() for k, a in arrays.items()}
                # Aggregation may promote dtypes (e.g. int buffers); keep the model's own.
                self.arrays = {
                    k: new[k].astype(v.dtype, copy=False) for k, v in self.arrays.items()
                }
                rlog.aggregated = True
        else:
            log.warning(
                "round %d: %d accepted updates < min_fit_clients %d; global model unchanged",
                rnd,
                len(accepted),
                self.fed.min_fit_clients,
            )
        if rlog.aggregated:
            self.releases += 1

    def _screen(
        self, rnd: int, cid: str, reply: Message, info: dict[str, Any], rlog: RoundLog
    ) -> str | None:
        """Reason to reject this update, or None; privacy report checked before the arrays."""
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
                self.reports.check(rnd, cid, info, self.round_digest, self.clients)
            except VeilfedError as exc:
                return str(exc)
            rlog.reported.append(cid)
        if self.secure is not None:
            return payload_problem(reply)
        verdict = screen_reply(
            reply,
            self.arrays,
            update_codec.for_round(self.fed, self.s.seed, rnd),
            self.fed.norm_bound if self.fed.norm_bound > 0 else None,
        )
        if verdict.wire_bytes:
            rlog.wire_bytes.append(verdict.wire_bytes)
        return verdict.reason

    def _evaluate(self, rnd: int, node_of: dict[str, int], rlog: RoundLog) -> None:
        chosen = sample_clients(self.s.seed + 1, rnd, sorted(node_of), self.fed.evaluated_per_round)
        arrays, config = self._global_message()
        config[ROUND_KEY] = rnd
        content = RecordDict({ARRAYS_RECORD: arrays, CONFIG_RECORD: config})
        shadow = self.secure.shadow if self.secure is not None else None
        if shadow is not None and self.he_global is not None:
            content[SHADOW_RECORD] = ArrayRecord({SHADOW_FLAT: Array(np.ascontiguousarray(shadow))})
        msgs = [
            Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=node_of[c])
            for c in chosen
        ]
        cid_of = {node_of[c]: c for c in chosen}
        outcome = evaluate(self.grid, rnd, msgs, cid_of, self.fed.round_timeout_s, self.specs)
        outcome.into(rlog)
        if self.secure is not None and rlog.aggregated and outcome.model_refused:
            self.secure.discard(rnd, rlog)
            self.releases -= 1

    def _finish_round(self, rlog: RoundLog, start: float) -> None:
        self.tracking.round(rlog, self.clients)
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
        self.tracking.metrics(record["metrics"], rlog.round)
        self.round = rlog.round
        state = ckpt_io.Checkpoint(
            round=self.round,
            arrays=self.arrays,
            strategy=strategy_state(self.strategy),
            history=self.history,
            clients=self.clients,
            exhausted=self.exhausted,
            he_global=self.he_global,
            best=self.best.state(),
        )
        ckpt_io.save(self.run_dir, state)
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
