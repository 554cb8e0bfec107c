"""The one ClientApp's mod: a declined message is one clear line in the node's log."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from veilfed.clients.client_app import announce_declines, app
from veilfed.federation.keys import REPLY_KEY, STATUS_DECLINED, STATUS_TRAINED

ROOT = Path(__file__).resolve().parents[2]


def test_simulation_flwr_run_and_real_nodes_run_the_same_client_app() -> None:
    import importlib

    from veilfed.launch import simulation
    from veilfed.launch.app_project import CLIENT_APP

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["tool"]["flwr"]["app"]["components"]["clientapp"] == CLIENT_APP
    module, attr = CLIENT_APP.split(":")
    assert getattr(importlib.import_module(module), attr) is app is simulation.client_app


def _answer(status: str):  # type: ignore[no-untyped-def]
    reason = "client client-0001: declining to train: ε 7.99 > budget 6.5"
    info = {"client-id": "client-0001", "status": status, "reason": reason}
    return lambda m, c: Message(RecordDict({REPLY_KEY: ConfigRecord(info)}), reply_to=m)


def test_declined_round_is_one_clear_node_log_line() -> None:
    msg = Message(
        RecordDict({"config": ConfigRecord({"server-round": 2})}),
        dst_node_id=1,
        message_type=MessageType.TRAIN,
    )
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    records: list[logging.LogRecord] = []
    catcher = logging.Handler()
    catcher.emit = records.append  # type: ignore[method-assign]
    node_log = logging.getLogger("veilfed.node")
    node_log.addHandler(catcher)
    try:
        announce_declines(msg, ctx, _answer(STATUS_TRAINED))
        assert not records
        reply = announce_declines(msg, ctx, _answer(STATUS_DECLINED))
    finally:
        node_log.removeHandler(catcher)
    assert reply.content[REPLY_KEY]["status"] == STATUS_DECLINED  # passed through unchanged
    (record,) = records
    assert record.getMessage() == (
        "round 2 declined: client client-0001: declining to train: ε 7.99 > budget 6.5"
    )
    veilfed = logging.getLogger("veilfed")
    assert veilfed.handlers and veilfed.level == logging.INFO  # the node's stream gets the lines
