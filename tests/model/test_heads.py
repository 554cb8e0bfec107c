"""Each head learns: its loss falls at least 3x within 40 Adam steps on a small fixed batch."""

from __future__ import annotations

import pytest
import torch
from testkit.model import learnable_batch, tiny

from veilfed.data import schema
from veilfed.model import HEADS, create_model
from veilfed.tasks import KINDS

STEPS = 40
FACTOR = 3.0
# Restoration's loss also scores the blended clip, which stays at the input's error until the
# painted estimate beats the input and the gate opens: only its painted half can fall 3x here.
FACTORS = {"restoration": 1.5}


def test_every_kind_has_a_head() -> None:
    assert set(HEADS.names()) == set(KINDS)


@pytest.mark.parametrize("task", schema.TASKS)
def test_head_learns(task: str) -> None:
    torch.manual_seed(0)
    batch = learnable_batch()
    model = create_model(tiny(tasks={task: 1.0}))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        total, per_task = model.loss(model(batch), batch)
        total.backward()
        opt.step()
        losses.append(float(per_task[task].detach()))
    factor = FACTORS.get(task, FACTOR)
    assert losses[-1] < losses[0] / factor, f"{task}: {losses[0]:.4f} -> {losses[-1]:.4f}"


def test_outputs_match_the_metrics_formats(batch: dict) -> None:
    from veilfed.metrics import build_metric

    model = create_model(tiny()).eval()
    preds = model.predict(batch)
    for task in schema.TASKS:
        meter = build_metric(task)
        meter.update(preds[task], batch["targets"], batch["target_mask"][task])
        assert meter.compute(), task
    assert preds["caption"].shape == batch["targets"]["caption"].shape
    assert preds["caption"].dtype == torch.long
    assert preds["restoration"].min() >= 0 and preds["restoration"].max() <= 1
