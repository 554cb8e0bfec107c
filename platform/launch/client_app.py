"""The ClientApp a real node runs: veilfed's own, with its decisions in the node's log.

A node operator reads the node's log, not the coordinator's: when the client declines a round
(its ε budget would be exceeded) that must be one clear line there. The train/evaluate/query
functions are veilfed's ClientApp functions unchanged; a Flower mod looks at each reply.
"""

from __future__ import annotations

import logging

from flwr.app import Context, Message, MessageType
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from veilfed.clients import client_app as base
from veilfed.federation.keys import (
    CONFIG_RECORD,
    REASON,
    REPLY_KEY,
    ROUND_KEY,
    STATUS,
    STATUS_DECLINED,
)
from veilfed.federation.log import log_to_stream

log = logging.getLogger("veilfed.node")
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
            log.warning("round %s%s declined: %s", rnd, what, info.get(REASON))
    return reply


app = ClientApp(mods=[announce_declines])
app.query()(base.query)
app.train()(base.train)
app.evaluate()(base.evaluate)
