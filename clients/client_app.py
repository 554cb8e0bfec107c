"""The Flower ClientApp: one virtual (or real) client answering query, train and evaluate.

The client's identity is ``client-<partition-id>`` in simulation (``client-id`` in the node
config on a real node); everything else it needs — settings, its shard, its accountant and
signing key — it reads from the run directory named in the message, so any Ray actor can serve
any client in any round. Replies carry a ``reply`` ConfigRecord: client id, status
(``trained``/``declined``), the reason for declining, and the signed privacy report.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from veilfed.coordinator.server_app import REPLY_KEY, STATUS_DECLINED, STATUS_TRAINED
from veilfed.coordinator.settings import SimSettings
from veilfed.coordinator.strategies import UNIT_WEIGHT_KEY, WEIGHT_KEY
from veilfed.data.partition import client_name

app = ClientApp()


def client_id(context: Context) -> str:
    """``client-id`` from a real node's config, else derived from the simulation partition."""
    cfg = context.node_config
    if "client-id" in cfg:
        return str(cfg["client-id"])
    return client_name(int(cfg["partition-id"]))


def _settings(msg: Message) -> SimSettings:
    return SimSettings.load(str(msg.content["config"]["run-dir"]))


def injected_failure(seed: int, cid: str, rnd: int, rate: float) -> bool:
    """Deterministic coin flip per (seed, client, round): the same clients fail on a re-run."""
    if rate <= 0:
        return False
    h = zlib.crc32(f"{seed}/{cid}/{rnd}".encode())
    return h / 2**32 < rate


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


@app.query()
def query(msg: Message, context: Context) -> Message:
    reply = ConfigRecord({"client-id": client_id(context)})
    return Message(RecordDict({REPLY_KEY: reply}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    from veilfed.clients.trainer import train_round

    settings = _settings(msg)
    cid = client_id(context)
    config = msg.content["config"]
    rnd = int(config["server-round"])
    if injected_failure(settings.seed, cid, rnd, settings.federated.failure_rate):
        raise RuntimeError(f"client {cid}: injected failure in round {rnd} (failure_rate)")
    if settings.he.enabled:
        from veilfed.clients.secure import global_model

        arrays, _ = global_model(settings, msg)
    else:
        arrays = {k: a.numpy() for k, a in msg.content["arrays"].items()}
    result = train_round(
        settings, cid, rnd, arrays, proximal_mu=float(config.get("proximal-mu", 0.0))
    )
    info = ConfigRecord({"client-id": cid})
    if result.declined is not None:
        info["status"] = STATUS_DECLINED
        info["reason"] = result.declined
        return Message(RecordDict({REPLY_KEY: info}), reply_to=msg)
    info["status"] = STATUS_TRAINED
    if result.report is not None:
        info["report"] = result.report
    if settings.he.enabled:
        return _encrypted_reply(msg, settings, arrays, result, info)
    metrics = MetricRecord(
        {WEIGHT_KEY: result.num_examples, UNIT_WEIGHT_KEY: 1, "train/loss": result.loss}
    )
    content = RecordDict({"arrays": _record(result.arrays), "metrics": metrics, REPLY_KEY: info})
    return Message(content, reply_to=msg)


def _encrypted_reply(
    msg: Message,
    settings: SimSettings,
    start: dict[str, np.ndarray],
    result: Any,
    info: ConfigRecord,
) -> Message:
    """Reply with Enc(n_k · w_k, n_k) instead of plaintext weights.

    The sample count travels only inside the ciphertext, so the loss is reported with unit
    weight. If the client's own checks (finite, HE bounds, norm bound) fail, it withholds the
    update but still sends its signed privacy report: the ε was spent and the report chain must
    not have a gap. Shadow mode (test runs) adds the plaintext weights and count for
    ``he/max_abs_error``; they are never aggregated.
    """
    from veilfed.clients.secure import SHADOW_WEIGHT, UPDATE_RECORD, encrypt_weights
    from veilfed.errors import CheckFailed

    metrics = MetricRecord({WEIGHT_KEY: 1, UNIT_WEIGHT_KEY: 1, "train/loss": result.loss})
    try:
        update = encrypt_weights(settings, result.arrays, start, result.num_examples)
        he = ConfigRecord({"update": update.to_bytes()})
    except CheckFailed as exc:
        he = ConfigRecord({"withheld": str(exc)})
    content = RecordDict({"metrics": metrics, REPLY_KEY: info, UPDATE_RECORD: he})
    if settings.he.shadow:
        content["arrays"] = _record(result.arrays)
        metrics[SHADOW_WEIGHT] = result.num_examples
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from veilfed.clients.trainer import evaluate_round

    settings = _settings(msg)
    cid = client_id(context)
    decrypted = None
    if settings.he.enabled:
        from veilfed.clients.secure import SHADOW_RECORD, global_model

        arrays, decrypted = global_model(settings, msg)
    else:
        arrays = {k: a.numpy() for k, a in msg.content["arrays"].items()}
    num_examples, metrics = evaluate_round(settings, cid, arrays)
    record = MetricRecord({WEIGHT_KEY: num_examples})
    if decrypted is not None:
        record["he/decrypt_ms"] = decrypted.decrypt_ms
        shadow = msg.content.array_records.get(SHADOW_RECORD)
        if shadow is not None:
            reference = shadow["flat"].numpy()
            record["he/max_abs_error"] = float(np.max(np.abs(decrypted.average - reference)))
    for task, values in metrics.items():
        for metric, value in values.items():
            record[f"eval/{task}/{metric}"] = float(value)
    info = ConfigRecord({"client-id": cid})
    return Message(RecordDict({"metrics": record, REPLY_KEY: info}), reply_to=msg)
