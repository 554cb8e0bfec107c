"""The Flower ClientApp: one virtual (or real) client answering query, train and evaluate.

Every message carries the run's settings (``settings``, JSON); the client's node-local inputs —
its clips, key, accountant, signing key and HE secret — come from ``veilfed.clients.inputs``
(the node config on a real node, the run directory in simulation), so any Ray actor can serve any
client in any round and a real node never needs the coordinator's files. Replies carry a
``reply`` ConfigRecord: client id, status (``trained``/``declined``), the reason for declining,
and the signed privacy report; a query reply also says what the coordinator checks before the
first round (shard size, report signing key, HE key id).

What leaves the node besides the (DP-noised) update and its report: a virtual client (the user's
own data, a research simulation) reports its mean training loss and metrics on its held-out clips;
a real node never sends its training loss, and sends evaluation metrics (with the label-only
baselines of its training split beside them) only when its data owner marked the held-out clips
evaluable (``--share-eval-metrics``); otherwise it declines the evaluate
message with no numbers. Under HE, a client that refuses the global model (too few contributors,
failed integrity check) declines with ``refused-model`` set: one line, the round goes on.

The same app serves simulation and real nodes. A node operator reads the node's log, not the
coordinator's, so its mod :func:`announce_declines` logs one line per declined message there and
sends veilfed's log lines to the app process's stream (``veilfed.federation.log``).
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from veilfed.clients.inputs import ClientInputs, client_inputs, client_key
from veilfed.clients.update_wire import ResidualStore, encode_release
from veilfed.errors import CheckFailed
from veilfed.federation import update_codec
from veilfed.federation.digest import model_digest
from veilfed.federation.keys import (
    ARRAYS_RECORD,
    CLIENT_ID,
    CLIPS,
    CONFIG_RECORD,
    DECRYPT_MS,
    GLOBAL_KEY,
    HE_KEY_ID,
    MAX_ABS_ERROR,
    METRICS_RECORD,
    PROXIMAL_MU_KEY,
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
    STATUS_TRAINED,
    TRAIN_EXAMPLES,
    TRAIN_LOSS,
    UNIT_WEIGHT_KEY,
    UPDATE_BYTES,
    UPDATE_RECORD,
    WEIGHT_KEY,
    WITHHELD,
    baseline_metric,
    eval_metric,
)
from veilfed.federation.log import log_to_stream
from veilfed.federation.settings import RunSettings

log = logging.getLogger("veilfed.client")
node_log = logging.getLogger("veilfed.node")
_WHAT = {MessageType.TRAIN: "", MessageType.EVALUATE: " evaluation"}


def announce_declines(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Log one line for every declined message: ``round N declined: <reason naming the client>``
    for training, ``round N evaluation declined: <reason>`` for evaluation."""
    log_to_stream()
    reply = call_next(msg, context)
    if reply.has_content() and REPLY_KEY in reply.content.config_records:
        info = reply.content.config_records[REPLY_KEY]
        if info.get(STATUS) == STATUS_DECLINED:
            rnd = msg.content.config_records[CONFIG_RECORD].get(ROUND_KEY, "?")
            kind = msg.metadata.message_type
            what = _WHAT.get(kind, f" {kind}")
            node_log.warning("round %s%s declined: %s", rnd, what, info.get(REASON))
    return reply


app = ClientApp(mods=[announce_declines])


def _settings(msg: Message) -> RunSettings:
    return RunSettings.from_json(str(msg.content[CONFIG_RECORD][SETTINGS_KEY]), "message settings")


def injected_failure(seed: int, cid: str, rnd: int, rate: float) -> bool:
    """Deterministic coin flip per (seed, client, round): the same clients fail on a re-run."""
    if rate <= 0:
        return False
    h = zlib.crc32(f"{seed}/{cid}/{rnd}".encode())
    return h / 2**32 < rate


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _declined(msg: Message, cid: str, reason: str, refused_model: bool = False) -> Message:
    """A one-line declined reply without numbers; logged on the node too."""
    log.warning("%s", reason)
    info = ConfigRecord({CLIENT_ID: cid, STATUS: STATUS_DECLINED, REASON: reason})
    if refused_model:
        info[REFUSED_MODEL] = True
    return Message(RecordDict({REPLY_KEY: info}), reply_to=msg)


def _global_model(
    msg: Message, settings: RunSettings, inputs: ClientInputs
) -> tuple[dict[str, np.ndarray], Any]:
    """The message's global model and its HE decryption (None without HE or in round 1).

    Raises ``CheckFailed`` when the client refuses the encrypted aggregate.
    """
    if not settings.he.enabled:
        return {k: a.numpy() for k, a in msg.content[ARRAYS_RECORD].items()}, None
    from veilfed.clients.secure import global_model

    return global_model(settings, inputs.he_secret, msg, inputs.he_min_contributors)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Who this client is, and what the coordinator checks before round 1.

    ``clips`` and ``train-examples`` (a shard needs a held-out part, δ must stay below 1/n, and
    under HE the round's total weight must fit the keys) are public anyway: FedAvg weights by
    them. ``signing-key`` is the public half of the
    report signing key; ``he-key-id`` names the HE keys the node encrypts with.
    """
    from veilfed.clients.trainer import split_shard

    settings = _settings(msg)
    inputs = client_inputs(settings, context.node_config)
    train_ids, _ = split_shard(settings, inputs)
    reply = ConfigRecord(
        {
            CLIENT_ID: inputs.client_id,
            CLIPS: len(inputs.clip_ids),
            TRAIN_EXAMPLES: len(train_ids),
        }
    )
    if settings.privacy.enabled and settings.federated.sign_reports:
        reply[SIGNING_KEY] = inputs.state.public_key_pem().decode()
    if settings.he.enabled and inputs.he_secret:
        from veilfed.clients.secure import secret_context

        reply[HE_KEY_ID] = secret_context(inputs.he_secret).key_id
    return Message(RecordDict({REPLY_KEY: reply}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    from veilfed.clients.trainer import train_round

    settings = _settings(msg)
    inputs = client_inputs(settings, context.node_config)
    cid = inputs.client_id
    config = msg.content[CONFIG_RECORD]
    rnd = int(config[ROUND_KEY])
    if injected_failure(settings.seed, cid, rnd, settings.federated.failure_rate):
        raise RuntimeError(f"client {cid}: injected failure in round {rnd} (failure_rate)")
    try:
        arrays, _ = _global_model(msg, settings, inputs)
    except CheckFailed as exc:
        return _declined(msg, cid, f"client {cid}: {exc}", refused_model=True)
    blob = None
    if settings.he.enabled:
        blob = config.get(GLOBAL_KEY)
    # The model as sent (the ciphertext under HE): what a replay must match and a report names.
    digest = model_digest(None if blob is not None else arrays, blob)
    result = train_round(
        settings,
        inputs,
        rnd,
        arrays,
        proximal_mu=float(config.get(PROXIMAL_MU_KEY, 0.0)),
        model_digest=digest,
    )
    info = ConfigRecord({CLIENT_ID: cid})
    if result.declined is not None:
        info[STATUS] = STATUS_DECLINED
        info[REASON] = result.declined
        return Message(RecordDict({REPLY_KEY: info}), reply_to=msg)
    info[STATUS] = STATUS_TRAINED
    if result.report is not None:
        info[REPORT] = result.report
    if settings.he.enabled:
        return _encrypted_reply(msg, settings, inputs, arrays, result, info)
    metrics = MetricRecord({WEIGHT_KEY: result.num_examples, UNIT_WEIGHT_KEY: 1})
    if inputs.simulated:
        metrics[TRAIN_LOSS] = result.loss
    sent = result.arrays
    codec = update_codec.for_round(settings.federated, settings.seed, rnd)
    if codec is not None:
        residuals = ResidualStore(inputs.state.dir, client_key(inputs.key_file))
        sent = encode_release(codec, residuals, settings.run_id, rnd, arrays, result.arrays)
    content = RecordDict({ARRAYS_RECORD: _record(sent), METRICS_RECORD: metrics, REPLY_KEY: info})
    return Message(content, reply_to=msg)


def _encrypted_reply(
    msg: Message,
    settings: RunSettings,
    inputs: ClientInputs,
    start: dict[str, np.ndarray],
    result: Any,
    info: ConfigRecord,
) -> Message:
    """Reply with Enc(n_k · w_k, n_k) instead of plaintext weights.

    The sample count travels only inside the ciphertext, so a virtual client's loss is reported
    with unit weight. If the client's own checks (finite, HE bounds, norm bound) fail, it
    withholds the update but still sends its signed privacy report: the ε was spent and the report
    chain must not have a gap. Shadow mode (simulated test runs only, off in every shipped config)
    adds the plaintext weights and count for ``he/max_abs_error``; they are never aggregated, and
    a real node never sends them, whatever the settings it receives say.
    """
    from veilfed.clients.secure import contributor_label, encrypt_weights

    metrics = MetricRecord({WEIGHT_KEY: 1, UNIT_WEIGHT_KEY: 1})
    if inputs.simulated:
        metrics[TRAIN_LOSS] = result.loss
    rnd = int(msg.content[CONFIG_RECORD][ROUND_KEY])
    label = contributor_label(settings.run_id, rnd, inputs.client_id)
    try:
        update = encrypt_weights(
            settings, inputs.he_secret, result.arrays, start, result.num_examples, label
        )
        he = ConfigRecord({UPDATE_BYTES: update.to_bytes()})
    except CheckFailed as exc:
        he = ConfigRecord({WITHHELD: str(exc)})
    content = RecordDict({METRICS_RECORD: metrics, REPLY_KEY: info, UPDATE_RECORD: he})
    if settings.he.shadow and inputs.simulated:
        content[ARRAYS_RECORD] = _record(result.arrays)
        metrics[SHADOW_WEIGHT] = result.num_examples
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from veilfed.clients.evaluation import evaluate_round

    settings = _settings(msg)
    inputs = client_inputs(settings, context.node_config)
    cid = inputs.client_id
    try:
        # Under HE a node checks the aggregate even when it shares no metrics: its refusal is
        # what lets the coordinator discard an aggregate nobody accepts.
        arrays, decrypted = _global_model(msg, settings, inputs)
    except CheckFailed as exc:
        return _declined(msg, cid, f"client {cid}: {exc}", refused_model=True)
    if not inputs.share_eval:
        reason = (
            f"client {cid}: metrics on its held-out clips are not shared (the node was started "
            "without --share-eval-metrics)"
        )
        return _declined(msg, cid, reason)
    num_examples, metrics, baselines = evaluate_round(settings, inputs, arrays)
    record = MetricRecord({WEIGHT_KEY: num_examples})
    if decrypted is not None:
        record[DECRYPT_MS] = decrypted.decrypt_ms
        shadow = msg.content.array_records.get(SHADOW_RECORD)
        if shadow is not None:
            reference = shadow[SHADOW_FLAT].numpy()
            record[MAX_ABS_ERROR] = float(np.max(np.abs(decrypted.average - reference)))
    for task, values in metrics.items():
        for metric, value in values.items():
            record[eval_metric(task, metric)] = float(value)
    for task, values in baselines.items():
        for metric, value in values.items():
            record[baseline_metric(task, metric)] = float(value)
    info = ConfigRecord({CLIENT_ID: cid})
    return Message(RecordDict({METRICS_RECORD: record, REPLY_KEY: info}), reply_to=msg)
