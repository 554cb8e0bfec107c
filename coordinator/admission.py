"""Before round 1: find which client each node holds, then admit every client or refuse the run.

Node ids are random, so the coordinator asks every node (a QUERY message carrying the run's
settings) which client it is. What only the nodes know is checked here, naming the client: a
real node presents the shard of the client its auth key is registered as, not another's
(``node-clients``); its shard has a held-out part and δ < 1/n for its n training examples; its
report signing key is registered on first contact, then pinned for the run (a node that comes
back with another key is refused); under HE it encrypts with the keys whose public context this
coordinator holds, and the round's total weight fits them (``secure_sum``).
"""

from __future__ import annotations

import time
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from veilfed.coordinator.secure_sum import SecureSum
from veilfed.errors import UsageError
from veilfed.federation.keys import (
    CLIENT_ID,
    CLIPS,
    CONFIG_RECORD,
    REPLY_KEY,
    SETTINGS_KEY,
    SIGNING_KEY,
    TRAIN_EXAMPLES,
)
from veilfed.federation.settings import RunSettings
from veilfed.privacy.report_signing import KeyRegistry

Found = dict[str, tuple[int, dict[str, Any]]]  # client id -> (node id, its query reply)


def reply_info(reply: Message) -> dict[str, Any]:
    """The reply record every veilfed ClientApp answer carries ({} when absent)."""
    rec = reply.content.config_records.get(REPLY_KEY)
    return dict(rec) if rec is not None else {}


def discover(grid: Grid, settings_json: str, expected: int, timeout: float) -> Found:
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
    found: Found = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise UsageError(f"node {node}: {reply.error.reason}")
        info = reply_info(reply)
        cid = str(info.get(CLIENT_ID))
        if cid in found:
            raise UsageError(
                f"nodes {found[cid][0]} and {node} both hold client {cid}'s shard; give each "
                "node its own bundle (`veilfed data export --client ...`)"
            )
        found[cid] = (node, info)
    return found


def admit(
    found: Found,
    settings: RunSettings,
    keys: KeyRegistry,
    secure: SecureSum | None,
    node_clients: dict[int, str],
) -> dict[str, int]:
    """Check every client before round 1 (see the module docstring); its training examples.

    ``node_clients``: node id -> the client id its auth key is registered as (real nodes; empty
    in a simulation, whose virtual nodes have no auth keys).
    """
    privacy = settings.privacy
    train: dict[str, int] = {}
    for cid, (node, info) in sorted(found.items()):
        if node_clients and node_clients.get(node) != cid:
            owner = node_clients.get(node)
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
        if privacy.enabled:
            try:
                privacy.validate(n, f"client {cid}: privacy")
            except UsageError as exc:
                raise UsageError(f"{exc}; lower [privacy] delta in the config") from None
        if privacy.enabled and settings.federated.sign_reports:
            pem = info.get(SIGNING_KEY)
            if not isinstance(pem, str):
                raise UsageError(f"client {cid}: offered no report signing key")
            keys.register(cid, pem.encode())
        if secure is not None:
            secure.check_client(cid, info)
    if secure is not None:
        secure.check_total_weight(sum(train.values()))
    return train
