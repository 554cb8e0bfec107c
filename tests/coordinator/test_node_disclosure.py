"""What leaves a real node besides its DP-noised update: no training loss, and evaluation
metrics on its held-out clips only when its data owner opted in (``--share-eval-metrics``).

Real node configs (as ``veilfed node start`` writes them), the real ClientApp and coordinator, in
process.
"""

from __future__ import annotations

import math
from pathlib import Path

from flwr.common.config import parse_config_args
from testkit.fed import LocalGrid, write_config
from testkit.nodes import CLIENTS, node_configs

from veilfed.coordinator import checkpoint
from veilfed.coordinator.prepare import prepare_deployment
from veilfed.coordinator.rounds import Coordinator


class _RecordingGrid(LocalGrid):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.replies: list = []

    def send_and_receive(self, messages, timeout=None):  # type: ignore[no-untyped-def]
        replies = super().send_and_receive(messages, timeout)
        self.replies += replies
        return replies


def test_real_nodes_keep_train_loss_and_share_eval_metrics_only_when_opted_in(tmp_path: Path):
    config = write_config(tmp_path, clients=2, rounds=1)
    nodes = node_configs(config, tmp_path, None)
    nodes[1]["share-eval-metrics"] = True  # client-0001's owner marked its held-out clips evaluable
    settings, tracker = prepare_deployment(config, len(nodes), tmp_path / "runs", None)
    grid = _RecordingGrid(2, node_configs=nodes)
    Coordinator(grid, settings, tracker).run()

    by_kind: dict[str, dict[str, object]] = {"train": {}, "evaluate": {}}
    for reply in grid.replies:
        if reply.metadata.message_type in by_kind:
            by_kind[reply.metadata.message_type][reply.content["reply"]["client-id"]] = reply
    assert set(by_kind["train"]) == set(by_kind["evaluate"]) == set(CLIENTS)
    for reply in by_kind["train"].values():
        metrics = dict(reply.content["metrics"])
        assert "train/loss" not in metrics and set(metrics) == {"num-examples", "unit-weight"}
    private, shared = (by_kind["evaluate"][c] for c in CLIENTS)
    info = private.content["reply"]
    assert info["status"] == "declined" and "--share-eval-metrics" in info["reason"]
    assert not private.content.metric_records and not private.content.array_records
    assert "eval/action/accuracy" in shared.content["metrics"]
    assert "baseline/action/accuracy" in shared.content["metrics"]  # under the same opt-in

    h = checkpoint.load(settings.run_dir).history[0]
    assert h["aggregated"] and math.isnan(h["metrics"]["train/loss"])
    assert "eval/action/accuracy" in h["metrics"]  # from the node that opted in only


def test_node_config_carries_the_opt_in_and_the_he_floor(tmp_path: Path):
    from veilfed.launch.start_node import NodeOptions, node_config

    opts = NodeOptions("h:1", tmp_path, tmp_path, tmp_path, tmp_path, tmp_path)
    default = parse_config_args([node_config("client-0000", opts)])
    assert "share-eval-metrics" not in default and default["he-min-contributors"] == 3
    opts.share_eval_metrics, opts.he_min_contributors = True, 5
    chosen = parse_config_args([node_config("client-0000", opts)])
    assert chosen["share-eval-metrics"] is True and chosen["he-min-contributors"] == 5
