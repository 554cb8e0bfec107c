"""Federated evaluation: the global model scored on sampled clients' held-out shards.

A reply is one MetricRecord: a positive ``num-examples``, then only ``eval/<task>/<metric>``,
``baseline/<task>/<metric>`` and ``EVAL_EXTRA`` entries, each a finite number; anything else is
rejected (logged, never an exception).

Per round, besides the example-weighted ``eval/`` means (:func:`round_scores`):
``baseline/<task>/<metric>`` (weighted like eval) and ``margin/<task>/<metric>`` (eval −
baseline); for each task's primary metric the 95 % intervals of the value and of the margin
(``eval_ci95/<task>/<metric>/lo|hi``, ``margin_ci95/<task>/<metric>/lo|hi``), a paired
bootstrap over the clients' weighted results (the coordinator never sees clips; with one client
there is no interval), and the spread across clients (``eval_clients/<task>/<metric>/mean``,
``/worst10``: mean of the worst 10 % of clients, at least one, ``/min``), so heterogeneous
clients stay visible behind the weighted mean.

A client that declines either accepted the model and keeps its metrics (a real node whose owner
did not opt in to sharing them) or refused the model (HE: its decryption failed the integrity
check or the contributor floor), which :class:`Evaluation` counts apart.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid

from veilfed.coordinator.admission import reply_info
from veilfed.coordinator.round_record import RoundLog, weighted
from veilfed.data.schema import SYNTHETIC_TASKS
from veilfed.federation.keys import (
    BASELINE_PREFIX,
    DECRYPT_MS,
    EVAL_EXTRA,
    EVAL_PREFIX,
    MAX_ABS_ERROR,
    REASON,
    REFUSED_MODEL,
    SCORE_PREFIXES,
    STATUS,
    STATUS_DECLINED,
    WEIGHT_KEY,
)
from veilfed.metrics import higher_is_better, primary_metric
from veilfed.metrics.intervals import client_bootstrap
from veilfed.tasks import TaskSpec, as_spec

log = logging.getLogger("veilfed.coordinator")

# Per-round metric names beside eval/ and baseline/ (MLflow and the run's history).
MARGIN_PREFIX = "margin"  # margin/<task>/<metric>
VALUE_CI = "eval_ci95"  # eval_ci95/<task>/<metric>/lo|hi
MARGIN_CI = "margin_ci95"  # margin_ci95/<task>/<metric>/lo|hi
SPREAD_PREFIX = "eval_clients"  # eval_clients/<task>/<metric>/mean|worst10|min


@dataclass
class Evaluation:
    """The replies of one round's evaluation, folded into its :class:`RoundLog`."""

    results: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    decrypt_ms: list[float] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # clients that refused the global model
    accepted_model: int = 0  # replies whose client accepted the global model
    specs: dict[str, TaskSpec] = field(default_factory=dict)  # the run's declared tasks

    def into(self, rlog: RoundLog) -> None:
        for key, value in weighted(self.results).items():
            kind, task, metric = key.split("/", 2)
            if kind == EVAL_PREFIX:
                rlog.eval.setdefault(task, {})[metric] = value
        rlog.scores.update(round_scores(self.results, seed=rlog.round, specs=self.specs))
        if self.decrypt_ms:
            rlog.he["he/decrypt_ms"] = float(np.mean(self.decrypt_ms))
        if self.errors:
            rlog.he["he/max_abs_error"] = max(self.errors)

    @property
    def model_refused(self) -> bool:
        """Every client that answered refused the model."""
        return bool(self.refused) and not self.accepted_model


def evaluate(
    grid: Grid,
    rnd: int,
    messages: list[Message],
    cid_of: dict[int, str],
    timeout: float,
    specs: dict[str, TaskSpec] | None = None,
) -> Evaluation:
    """Send the evaluate ``messages`` (node id -> client id in ``cid_of``), collect replies;
    ``specs``: the run's declared tasks (default: the synthetic preset's, by name)."""
    out = Evaluation(specs=dict(specs or {}))
    for reply in grid.send_and_receive(messages, timeout=timeout):
        cid = cid_of.get(reply.metadata.src_node_id)
        if cid is None:
            continue
        if reply.has_error():
            log.warning("round %d: evaluation by %s failed: %s", rnd, cid, reply.error.reason)
            continue
        info = reply_info(reply)
        if info.get(STATUS) == STATUS_DECLINED:
            log.warning("round %d: evaluation: %s", rnd, info.get(REASON, "declined"))
            if info.get(REFUSED_MODEL) is True:
                out.refused.append(cid)
            else:
                out.accepted_model += 1
            continue
        parsed = eval_metrics(reply)
        if isinstance(parsed, str):
            log.warning("round %d: evaluation reply of %s rejected: %s", rnd, cid, parsed)
            continue
        weight, metrics = parsed
        out.accepted_model += 1
        if DECRYPT_MS in metrics:
            out.decrypt_ms.append(metrics.pop(DECRYPT_MS))
        if MAX_ABS_ERROR in metrics:
            out.errors.append(metrics.pop(MAX_ABS_ERROR))
        out.results.append((weight, metrics))
    return out


def eval_metrics(reply: Message) -> tuple[float, dict[str, float]] | str:
    """(weight, metrics) of an evaluate reply, or why it is rejected (never an exception)."""
    records = list(reply.content.metric_records.values())
    if len(records) != 1:
        return f"{len(records)} metric records, expected 1"
    metrics = dict(records[0])
    weight = metrics.pop(WEIGHT_KEY, None)
    if not finite_number(weight) or weight <= 0:
        return f"invalid {WEIGHT_KEY} {weight!r}"
    out: dict[str, float] = {}
    for key, value in metrics.items():
        parts = key.split("/", 2)
        named = key in EVAL_EXTRA or (len(parts) == 3 and parts[0] in SCORE_PREFIXES and all(parts))
        if not named:
            return f"unexpected metric {key!r}"
        if not finite_number(value):
            return f"metric {key!r} is not a finite number ({value!r})"
        out[key] = float(value)
    return float(weight), out


def round_scores(
    results: list[tuple[float, dict[str, float]]],
    seed: int = 0,
    specs: dict[str, TaskSpec] | None = None,
) -> dict[str, float]:
    """``baseline/``, ``margin/``, ``eval_ci95/``, ``margin_ci95/`` and ``eval_clients/`` metrics
    of one round's replies ``(weight, {"eval/<task>/<metric>": v, "baseline/...": b})``."""
    means = weighted(results)
    out: dict[str, float] = {}
    for key, value in means.items():
        kind, task, metric = key.split("/", 2)
        if kind != BASELINE_PREFIX:
            continue
        out[key] = value
        model = means.get(f"{EVAL_PREFIX}/{task}/{metric}")
        if model is not None:
            out[f"{MARGIN_PREFIX}/{task}/{metric}"] = model - value
    tasks = {k.split("/", 2)[1] for k in means if k.startswith(EVAL_PREFIX + "/")}
    specs = specs or {t: as_spec(t) for t in tasks if t in SYNTHETIC_TASKS}
    for task in sorted(t for t in tasks if t in specs):
        metric = primary_metric(specs[task])
        name = f"{task}/{metric}"
        per_client = [
            (w, m[f"{EVAL_PREFIX}/{name}"], m.get(f"{BASELINE_PREFIX}/{name}"))
            for w, m in results
            if f"{EVAL_PREFIX}/{name}" in m
        ]
        if not per_client:
            continue
        better = higher_is_better(specs[task], metric)
        out |= client_spread(name, [v for _, v, _ in per_client], better)
        value_ci, margin_ci = client_bootstrap(per_client, seed=seed)
        for prefix, ci in ((VALUE_CI, value_ci), (MARGIN_CI, margin_ci)):
            if ci is not None:
                out[f"{prefix}/{name}/lo"], out[f"{prefix}/{name}/hi"] = ci
    return out


def client_spread(name: str, values: list[float], higher_better: bool) -> dict[str, float]:
    """``eval_clients/<name>/mean|worst10|min`` of one metric's per-client values (unweighted:
    each client counts once, however many clips it holds)."""
    ranked = sorted(values, reverse=not higher_better)  # worst first
    worst = ranked[: max(1, math.ceil(0.1 * len(ranked)))]
    return {
        f"{SPREAD_PREFIX}/{name}/mean": float(np.mean(values)),
        f"{SPREAD_PREFIX}/{name}/worst10": float(np.mean(worst)),
        f"{SPREAD_PREFIX}/{name}/min": float(min(values)),
    }


def finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
