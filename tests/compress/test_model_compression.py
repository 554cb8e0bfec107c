"""Quantized, pruned and distilled models run, shrink and keep their metric."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from veilfed.compress import (
    COMPRESSIONS,
    pack_sparse,
    sparsity,
    state_dict_bytes,
    unpack_sparse,
)
from veilfed.errors import UsageError


def toy_task() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=g)
    y = (x[:, :4].sum(1) > 0).long() + (x[:, 4] > 1).long()
    return x, y


def trained_mlp(hidden: int = 96) -> nn.Module:
    torch.manual_seed(0)
    x, y = toy_task()
    model = nn.Sequential(
        nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 3)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def accuracy(model: nn.Module) -> float:
    x, y = toy_task()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def mlp() -> nn.Module:
    return trained_mlp()


def test_int8_ptq_runs_shrinks_and_keeps_accuracy(mlp: nn.Module) -> None:
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    small, report = COMPRESSIONS.build("int8_ptq")(mlp, accuracy)
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in small.modules())
    assert report.bytes_after < 0.45 * report.bytes_before
    assert report.ratio > 2.2
    assert report.metric_before > 0.85
    assert report.metric_after >= report.metric_before - 0.03
    x, _ = toy_task()
    with torch.no_grad():
        ref = mlp(x)
        assert (small(x) - ref).norm() < 0.05 * ref.norm()
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())  # untouched


def test_int8_ptq_weight_only_convs_and_embeddings() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.Flatten(), nn.Linear(32 * 4 * 4, 5)
    ).eval()
    small, report = COMPRESSIONS.build("int8_ptq")(model)
    state = small.state_dict()
    assert state["0.weight_int8"].dtype == torch.int8 and "0.weight" not in state
    assert report.ratio > 3
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
        assert (small(x) - ref).norm() < 0.05 * ref.norm()
    emb = nn.Embedding(50, 8)
    qemb, _ = COMPRESSIONS.build("int8_ptq")(emb)
    idx = torch.randint(0, 50, (2, 3, 4))  # any index shape works
    assert torch.allclose(qemb(idx), emb(idx), atol=emb.weight.abs().max().item() / 100)
    float_convs, _ = COMPRESSIONS.build("int8_ptq", weight_only=False)(model)
    assert "0.weight" in float_convs.state_dict()


def test_magnitude_prune(mlp: nn.Module) -> None:
    small, report = COMPRESSIONS.build("magnitude_prune", amount=0.6)(mlp, accuracy)
    assert sparsity(small) == pytest.approx(0.6, abs=0.01)
    assert sparsity(mlp) == 0.0
    assert list(small.state_dict()) == list(mlp.state_dict())  # keys intact for FL
    assert report.bytes_after < 0.6 * report.bytes_before
    assert report.metric_after >= report.metric_before - 0.1
    state = small.state_dict() | {
        "half": torch.tensor([[0.0, 1.5], [2.0, 0.0]], dtype=torch.float16),
        "bf16": torch.tensor([0.0, -3.0], dtype=torch.bfloat16),
        "steps": torch.tensor(7),
    }
    restored = unpack_sparse(pack_sparse(state))
    assert list(restored) == list(state)
    for k, v in state.items():
        assert restored[k].dtype == v.dtype and torch.equal(restored[k], v), k


def test_structured_prune_zeroes_whole_channels() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.Flatten(), nn.Linear(16 * 4 * 4, 5)
    )
    small, report = COMPRESSIONS.build("structured_prune", amount=0.5, dim=0, convs_only=True)(
        model
    )
    for conv in (small[0], small[2]):
        dead = (conv.weight.flatten(1) == 0).all(1)
        assert int(dead.sum()) == conv.out_channels // 2
    assert (small[4].weight != 0).all()
    assert small(torch.randn(2, 3, 8, 8)).shape == (2, 5)
    assert report.bytes_after < report.bytes_before
    inputs, _ = COMPRESSIONS.build("structured_prune", amount=0.25)(model)
    dead_in = (inputs[4].weight == 0).all(0)  # dim=1: whole input features of the Linear
    assert int(dead_in.sum()) == 64
    assert (inputs[4].weight != 0).any(1).all()  # no output unit silenced


def test_distill_student_learns_teacher(mlp: nn.Module) -> None:
    x, _ = toy_task()
    loader = [x[i : i + 64] for i in range(0, 512, 64)]

    def student() -> nn.Module:
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))

    untrained = accuracy(student())
    small, report = COMPRESSIONS.build(
        "distill", build_student=student, loader=loader, epochs=15, lr=1e-2
    )(mlp, accuracy)
    assert report.bytes_after < report.bytes_before / 5
    assert report.metric_after > max(untrained, 0.75)


def test_bad_arguments_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="amount"):
        COMPRESSIONS.build("magnitude_prune", amount=1.5)
    with pytest.raises(UsageError, match="unknown compression 'zip'; valid: distill"):
        COMPRESSIONS.build("zip")
    with pytest.raises(UsageError, match="no Linear or Conv"):
        COMPRESSIONS.build("magnitude_prune")(nn.Sequential(nn.ReLU()))
    assert state_dict_bytes(nn.Linear(4, 4)) > 0
