"""Heads declare their own evaluation needs: a generative head registered here, in the test only,
is configured, trained one step, decoded over every fused view and scored with no core edit."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from testkit.model import tiny
from torch import Tensor, nn

import veilfed.model.core
import veilfed.model.evaluate
import veilfed.tasks
from veilfed.config import parse_config
from veilfed.data import schema
from veilfed.data.text import BOS, PAD, Tokenizer
from veilfed.metrics import TaskMetric, build_metric
from veilfed.model import HEADS, create_model, evaluate
from veilfed.model.heads.base import Head, HeadInput
from veilfed.tasks import TaskSpec

TOY = "toy_story"


class ToyStoryHead(Head):
    """Next token from the pooled view and the previous token; decoded greedily, one view's
    log-probabilities weighted by the fusion's vote. Scored as a caption."""

    generative = True
    calls: list[tuple[int, tuple[int, ...] | None]] = []

    def __init__(self, dim: int, spec: TaskSpec, vocab_size: int | None = None, **_: Any) -> None:
        super().__init__(dim, spec)
        vocab = vocab_size or Tokenizer().vocab_size
        self.embed = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, vocab)

    def step(self, inp: HeadInput, prev: Tensor) -> Tensor:
        return self.out(inp.view.pooled.unsqueeze(1) + self.embed(prev))

    def forward(self, inp: HeadInput) -> Tensor:
        return self.step(inp, inp.batch["targets"]["caption"][:, :-1])

    def loss(self, output: Tensor, targets: dict[str, Tensor]) -> Tensor:
        target = targets["caption"][:, 1:]
        ce = F.cross_entropy(output.transpose(1, 2), target, ignore_index=PAD, reduction="none")
        return ce.sum(dim=1) / (target != PAD).sum(dim=1).clamp(min=1)

    def generate(self, views: Sequence[tuple[Head, HeadInput]], weights: Tensor | None) -> Tensor:
        type(self).calls.append((len(views), None if weights is None else tuple(weights.shape)))
        batch = views[0][1].batch
        length = batch["targets"]["caption"].shape[1]
        ids = torch.full((batch["video"].shape[0], 1), BOS, dtype=torch.long)
        for _ in range(length - 1):
            logp = [head.step(inp, ids[:, -1:])[:, -1].log_softmax(-1) for head, inp in views]
            w = weights if weights is not None else torch.ones(ids.shape[0], 1)
            combined = sum(w[:, i : i + 1] * lp for i, lp in enumerate(logp))
            ids = torch.cat([ids, combined.argmax(-1, keepdim=True)], dim=1)
        return ids

    def metric(self) -> TaskMetric:
        return build_metric("caption")


@pytest.fixture
def toy_head(monkeypatch: pytest.MonkeyPatch) -> type[ToyStoryHead]:
    monkeypatch.setitem(HEADS._items, TOY, ToyStoryHead)  # a head kind for this test only
    monkeypatch.setitem(veilfed.tasks.KINDS, TOY, ("target",))
    monkeypatch.setattr(ToyStoryHead, "calls", [])
    return ToyStoryHead


@pytest.mark.parametrize(("fusion", "views"), [("concat", 1), ("vote", 3)])
def test_a_new_generative_head_needs_no_core_edit(
    toy_head: type[ToyStoryHead], batch: dict[str, Any], fusion: str, views: int
) -> None:
    tasks = {TOY: {"kind": TOY, "targets": {"target": "caption"}}, "action": 1.0}
    cfg = parse_config({"model": {"tasks": tasks, "fusion": fusion}}, "t")
    assert list(cfg.model.tasks) == [TOY, "action"]
    torch.manual_seed(0)
    model = create_model(tiny(tasks=tasks, fusion=fusion))
    total, per_task = model.loss(model(batch), batch)
    total.backward()
    assert per_task[TOY] > 0 and model.task_heads()[TOY].out.weight.grad is not None

    preds = model.eval().predict(batch)
    caption = batch["targets"]["caption"]
    assert preds[TOY].shape == caption.shape and preds[TOY].dtype == torch.long
    assert toy_head.calls == [(views, None if views == 1 else (caption.shape[0], views))]

    results = evaluate(model, [batch, batch])
    assert set(results[TOY]) == {"token_f1", "bleu", "loss"}
    assert 0 <= results[TOY]["token_f1"] <= 1 and results[TOY]["loss"] > 0
    assert set(results["action"]) >= {"accuracy", "loss"}
    assert len(toy_head.calls) == 3  # predict once, then once per evaluated batch


def _string_constants(module: Any) -> set[str]:
    tree = ast.parse(inspect.getsource(module))
    return {
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def test_the_model_core_names_no_head() -> None:
    """Task-specific evaluation lives in the heads: the core and the loop name no head kind and
    no task."""
    for module in (veilfed.model.core, veilfed.model.evaluate):
        named = _string_constants(module) & (set(HEADS.names()) | set(schema.TASKS))
        assert not named, f"{module.__name__} special-cases {sorted(named)}"
