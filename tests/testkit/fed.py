"""Test helpers for the federated layer: a tiny experiment, a prepared run, an in-process grid.

``LocalGrid`` delivers Flower messages to the real ClientApp in this process, so the round loop,
accounting, checkpoints and fault handling are tested without Ray (the Ray path has one
integration test).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

TINY = """
name = "fedtest"
[world]
clips = {clips}
frames = 4
size = 16
seed = 3
[model]
dim = 16
pixel_dim = 8
encoders = {{ video = "conv2p1d", audio = "", text = "" }}
fusion = "concat"
tasks = {{ action = 1.0, moderation = 1.0 }}
[train]
batch_size = 2
lr = 0.05
seed = 7
[privacy]
enabled = true
epsilon = 8.0
delta = 1e-3
max_grad_norm = 1.0
[federated]
clients = {clients}
rounds = {rounds}
fraction = {fraction}
min_fit_clients = 1
"""


def write_config(
    tmp: Path,
    clips: int = 12,
    clients: int = 3,
    rounds: int = 2,
    fraction: float = 1.0,
    extra: str = "",
) -> Path:
    path = tmp / "fedtest.toml"
    text = TINY.format(clips=clips, clients=clients, rounds=rounds, fraction=fraction)
    path.write_text(text + extra)
    return path


def make_run(
    tmp: Path,
    config: Path,
    runs: str = "runs",
    epsilon: float | None = None,
    overrides: dict[str, Any] | None = None,
):  # type: ignore[no-untyped-def]
    from veilfed.coordinator.prepare import prepare

    return prepare(config, overrides or {}, epsilon, None, None, None, tmp / runs)


class LocalGrid:
    """Grid stand-in calling the ClientApp in-process; ``tamper``/``kill_after`` inject faults.

    ``node_configs`` makes the nodes real ones (``veilfed node start``'s node config) instead of
    simulation partitions.
    """

    def __init__(
        self,
        num_nodes: int,
        tamper: Callable[[Message], Message] | None = None,
        kill_after: int | None = None,
        node_configs: list[dict[str, Any]] | None = None,
    ) -> None:
        from veilfed.clients.client_app import app

        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
        self.app = app
        ids = [10_007 * (i + 1) % 65_521 for i in range(num_nodes)]  # not in partition order
        self.contexts = {
            nid: Context(
                run_id=1,
                node_id=nid,
                state=RecordDict(),
                run_config={},
                node_config=(
                    node_configs[pid]
                    if node_configs is not None
                    else {"partition-id": pid, "num-partitions": num_nodes}
                ),
            )
            for pid, nid in enumerate(ids)
        }
        self.tamper = tamper
        self.kill_after = kill_after
        self.train_calls = itertools.count(1)

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(
        self, messages: Iterable[Message], timeout: float | None = None
    ) -> list[Message]:
        replies = []
        for msg in messages:
            try:
                reply = self.app(msg, self.contexts[msg.metadata.dst_node_id])
            except Exception as exc:  # a crashed ClientApp becomes an error reply, as in Flower
                reply = Message(Error(code=1, reason=str(exc)), reply_to=msg)
            if msg.metadata.message_type == "train":
                if self.tamper is not None and not reply.has_error():
                    reply = self.tamper(reply)
                if self.kill_after is not None and next(self.train_calls) >= self.kill_after:
                    raise KeyboardInterrupt("killed mid-round")
            replies.append(reply)
        return replies
