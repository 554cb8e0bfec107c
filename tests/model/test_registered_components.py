"""Every registered encoder, fusion, head and loss weighting keeps its uniform contract.

Parametrized over the registries, so a newly registered component is tested here with no test
edit: it builds from its defaults, its forward has the shapes its interface promises, its
``state_dict`` restores it exactly, and a head's evaluation output is scored by its own metric.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch
from testkit.model import KIND_TASKS, make_batch, tiny
from torch import nn

from veilfed.data import schema
from veilfed.metrics import TaskMetric
from veilfed.model import ENCODERS, FUSIONS, HEADS, LOSSES, create_model
from veilfed.model.encoders.base import Encoded
from veilfed.model.fusion.base import FusionOutput

DIM, B = 16, 2


def _outputs_equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_outputs_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return all(_outputs_equal(x, y) for x, y in zip(a, b, strict=True))
    if dataclasses.is_dataclass(a):
        return _outputs_equal(vars(a), vars(b))
    if isinstance(a, torch.Tensor):
        return torch.allclose(a, b, atol=1e-6) if a.is_floating_point() else torch.equal(a, b)
    return a == b


def _restores(build: Callable[[], nn.Module], run: Callable[[nn.Module], Any]) -> None:
    """A second instance (other random init) loaded with the first's state_dict matches it."""
    torch.manual_seed(0)
    a = build().eval()
    torch.manual_seed(1)
    b = build().eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        assert _outputs_equal(run(a), run(b))


def _video_batch(encoder: nn.Module) -> dict[str, Any]:
    """A batch the encoder's strides divide: two temporal and two spatial steps."""
    side = 2 * getattr(encoder, "spatial_stride", 8)
    return make_batch(B, t=2 * getattr(encoder, "t_stride", 1), h=side, w=side)


@pytest.mark.parametrize("name", ENCODERS.names())
def test_encoder_contract(name: str) -> None:
    encoder = ENCODERS.build(name, dim=DIM).eval()
    assert encoder.modality in schema.MODALITIES and encoder.dim == DIM
    batch = _video_batch(encoder) if encoder.modality == "video" else make_batch(B)
    x = batch[encoder.modality]
    with torch.no_grad():
        out = encoder(x)
    assert isinstance(out, Encoded)
    assert out.tokens.dim() == 3 and out.tokens.shape[::2] == (B, DIM)
    assert out.pooled.shape == (B, DIM)
    if out.token_mask is not None:
        assert out.token_mask.shape == out.tokens.shape[:2] and out.token_mask.dtype == torch.bool
    if encoder.modality == "video":  # dense heads read the grid through the strides
        t, h = x.shape[1], x.shape[3]
        assert out.grid is not None
        assert out.grid.shape == (
            B,
            t // encoder.t_stride,
            h // encoder.spatial_stride,
            h // encoder.spatial_stride,
            DIM,
        )
    _restores(lambda: ENCODERS.build(name, dim=DIM), lambda m: m(x))


def _encoded(batch: dict[str, Any]) -> dict[str, Encoded]:
    encoders = {m: ENCODERS.build(n, dim=DIM) for m, n in tiny().encoders.items() if n}
    with torch.no_grad():
        return {m: enc(batch[m]) for m, enc in encoders.items()}


@pytest.mark.parametrize("name", FUSIONS.names())
def test_fusion_contract(name: str) -> None:
    torch.manual_seed(0)
    batch = make_batch(B)
    encoded = _encoded(batch)
    modalities = tuple(encoded)
    present = {m: torch.tensor([True, i != 0]) for i, m in enumerate(modalities)}

    def build() -> nn.Module:
        return FUSIONS.build(name, modalities=modalities, dim=DIM)

    fusion = build().eval()
    with torch.no_grad():
        out = fusion(encoded, present)
    assert isinstance(out, FusionOutput)
    assert len(out.views) == (len(modalities) if fusion.num_views_per_modality else 1)
    for view in out.views:
        assert view.pooled.shape == (B, DIM) and view.tokens.shape[::2] == (B, DIM)
        assert view.token_mask.shape == view.tokens.shape[:2]
        assert view.grid is None or view.grid.shape[::4] == (B, DIM)
    if len(out.views) > 1:
        assert out.weights is not None and out.weights.shape == (B, len(out.views))
        assert torch.allclose(out.weights.sum(1), torch.ones(B))
    _restores(build, lambda m: m(encoded, present))


@pytest.mark.parametrize("kind", HEADS.names())
def test_head_contract(kind: str) -> None:
    """Built for a declared task of its kind; per-sample loss [B]; its evaluation output
    (``predict`` or ``generate``) is what its own ``metric`` scores; restored exactly from its
    state_dict."""
    name, value = KIND_TASKS[kind]
    cfg = tiny(dim=DIM, pixel_dim=8, tasks={name: value})
    batch = make_batch(B, tasks=cfg.task_specs())
    torch.manual_seed(0)
    model = create_model(cfg)
    head = model.task_heads()[name]
    assert head.task == name and head.spec.kind == kind
    assert set(head.requires) <= set(schema.MODALITIES)
    per_sample, _ = model.per_sample_loss(model(batch), batch)
    assert per_sample.shape == (B,) and torch.isfinite(per_sample).all()
    model.eval()
    preds = model.predict(batch)
    meter = head.metric()
    assert isinstance(meter, TaskMetric)
    meter.update(preds[name], batch["targets"], batch["target_mask"].get(name))
    assert meter.compute()
    _restores(lambda: create_model(cfg), lambda m: m.predict(batch))


@pytest.mark.parametrize("name", LOSSES.names())
def test_loss_weighting_contract(name: str) -> None:
    """Per-sample task losses [B, n] -> per-sample total [B] (Opacus ghost clipping reweights
    samples), differentiable in the losses; weights reported per task; state restored."""
    tasks, weights = ("action", "caption", "pose"), (1.0, 2.0, 0.5)

    def build() -> nn.Module:
        return LOSSES.build(name, tasks=tasks, weights=weights)

    weighting = build()
    losses = torch.rand(B, len(tasks), requires_grad=True)
    total = weighting(losses)
    assert total.shape == (B,) and torch.isfinite(total).all()
    total.sum().backward()
    assert losses.grad is not None and (losses.grad != 0).any()
    for _ in range(3):  # epochs: weightings that adapt do so here
        weighting.end_epoch(torch.rand(len(tasks)))
    assert set(weighting.current_weights()) == set(tasks)
    fresh = build()
    fresh.load_state_dict(weighting.state_dict())
    probe = torch.rand(B, len(tasks))
    assert torch.allclose(fresh(probe), weighting(probe))
    assert fresh.current_weights() == pytest.approx(weighting.current_weights())
