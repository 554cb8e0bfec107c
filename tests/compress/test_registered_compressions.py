"""Every registered compression keeps the contract of its kind, so a new one is tested with no
test edit. A *model* compression returns a working copy no larger than the model and a report,
leaving the model untouched; an *update* compressor's payload is arrays that decompress to the
update's shapes and dtypes, and its report measures without touching its state."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from veilfed.compress import COMPRESSIONS, CompressionReport
from veilfed.compress.registry import ModelCompression, UpdateCompressor


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


INPUTS = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))


def _score(model: nn.Module) -> float:
    with torch.no_grad():
        return float(model(INPUTS).abs().mean())


# What a compression may need that has no default: the model compressions' documented
# arguments (``distill``: a student factory and the data to imitate the teacher on).
REQUIRED: dict[str, Any] = {
    "build_student": lambda: nn.Sequential(nn.Linear(16, 4)),
    "loader": [INPUTS],
}


def _build(name: str) -> Any:
    factory = COMPRESSIONS.get(name)
    required = [
        p.name
        for p in inspect.signature(factory).parameters.values()
        if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    return COMPRESSIONS.build(name, **{k: REQUIRED[k] for k in required})


@pytest.mark.parametrize("name", COMPRESSIONS.names())
def test_compression_contract(name: str) -> None:
    compression = _build(name)
    assert compression.name == name and compression.kind in ("model", "update")
    if compression.kind == "model":
        assert isinstance(compression, ModelCompression)
        model = _model()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        small, report = compression(model, _score)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
        with torch.no_grad():
            assert small(INPUTS).shape == model(INPUTS).shape
        assert isinstance(report, CompressionReport) and report.name == name
        assert 0 < report.bytes_after <= report.bytes_before
        assert report.metric_before is not None and report.metric_after is not None
        return
    assert isinstance(compression, UpdateCompressor)
    rng = np.random.default_rng(0)
    update = [rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=7).astype(np.float32)]
    report = compression.report(update)
    assert report.bytes_before == sum(a.nbytes for a in update) and report.bytes_after > 0
    assert np.isfinite(report.extra["rel_error"])
    payload = compression.compress(update)
    assert all(isinstance(v, np.ndarray) for v in payload.values())
    restored = compression.decompress(payload)
    assert [(a.shape, a.dtype) for a in restored] == [(a.shape, a.dtype) for a in update]
    assert all(np.isfinite(a).all() for a in restored)
