"""`veilfed model export` (veilfed.inference.export): each format reloads and matches the eager
model per output to 1e-4, on a batch size it was not traced with; an op ONNX cannot express is
one line naming it and nothing is written; an existing file is never replaced without --force."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from veilfed.errors import UsageError
from veilfed.inference.export import FORMATS, TOLERANCE, Exported, export, run_exported
from veilfed.inference.runtime import runner
from veilfed.model.encoders import video as video_encoders
from veilfed.model.saved import load_with_input


@pytest.fixture(scope="module")
def loaded(saved_model: Path):
    return load_with_input(saved_model)


@pytest.mark.parametrize(
    "fmt", [pytest.param(f, marks=pytest.mark.slow) if f == "pt2" else f for f in FORMATS]
)
def test_each_format_matches_the_eager_model(loaded, fmt: str, tmp_path: Path) -> None:
    model, world = loaded
    out = tmp_path / f"model.{fmt}"
    meta = export(model, world, fmt, out)
    assert out.is_file() and json.loads(out.with_name(out.name + ".json").read_text()) == meta
    assert meta["left_out"] == ["caption"] and "detection.boxes" in meta["outputs"]
    assert all(d <= TOLERANCE for d in meta["max_abs_diff"].values())
    wrapper = Exported(model, world)
    inputs = wrapper.example(batch=5, seed=7)  # a batch size neither export nor check used
    with torch.no_grad():
        eager = [t.numpy() for t in wrapper(*inputs)]
    for got, want in zip(run_exported(out, fmt, inputs), eager, strict=True):
        assert got.shape == want.shape and abs(got - want).max() <= TOLERANCE


@pytest.mark.slow  # 20 s: a second ONNX export
def test_an_op_onnx_cannot_express_is_named_and_nothing_written(
    loaded, tmp_path: Path, monkeypatch
) -> None:
    """The video encoder given an op without an ONNX translation (a running maximum)."""
    model, world = loaded
    stats = video_encoders.degradation_stats

    def with_cummax(video, period=8):
        s = stats(video, period)
        return s + 0 * torch.cummax(s, dim=-1).values

    monkeypatch.setattr(video_encoders, "degradation_stats", with_cummax)
    with pytest.raises(
        UsageError, match=r"no ONNX translation for aten\.cummax in module encoders\.video; "
    ):
        export(model, world, "onnx", tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_not_replaced(loaded, tmp_path: Path) -> None:
    model, world = loaded
    (tmp_path / "m.pt2").write_text("mine")
    with pytest.raises(UsageError, match="exists"):
        export(model, world, "pt2", tmp_path / "m.pt2")
    assert (tmp_path / "m.pt2").read_text() == "mine"
    with pytest.raises(UsageError, match="--format 'tflite'"):
        export(model, world, "tflite", tmp_path / "m.tflite")


def test_an_export_into_a_new_folder_and_a_foreign_onnx_file(loaded, tmp_path: Path) -> None:
    model, world = loaded
    meta = export(model, world, "pt2", tmp_path / "new" / "m.pt2")
    assert (tmp_path / "new" / "m.pt2").is_file() and meta["format"] == "pt2"
    with pytest.raises(UsageError, match="does not describe an ONNX export") as err:
        runner("onnxruntime", model, world, onnx=tmp_path / "new" / "m.pt2")
    assert "\n" not in str(err.value)
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    (tmp_path / "x.onnx.json").write_text(json.dumps(meta | {"format": "onnx"}))
    with pytest.raises(UsageError, match="not an ONNX model onnxruntime runs"):
        runner("onnxruntime", model, world, onnx=tmp_path / "x.onnx")
    other = meta | {"format": "onnx", "outputs": ["mood"], "left_out": []}
    (tmp_path / "x.onnx.json").write_text(json.dumps(other))
    with pytest.raises(UsageError, match="exported from a model with tasks mood"):
        runner("onnxruntime", model, world, onnx=tmp_path / "x.onnx")
