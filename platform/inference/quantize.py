"""A trained model compressed to int8 for CPU serving, measured against itself and its baseline.

:func:`compress_int8` exports the model to ONNX (parity-checked, :mod:`.export`), quantizes it
with onnxruntime's dynamic int8 quantization (weights int8 ahead of time, activations per batch:
the maintained path; ``torch.ao.quantization`` is deprecated), then measures side by side:

* held-out metrics of the eager model and of the int8 model on the same clips, each beside the
  label-only baselines fitted on the training clips (``veilfed.model.score``), so the report says
  what int8 costs and whether the model still clears its baseline;
* file size of the fp32 and int8 ONNX files and the state dict;
* per-window latency (batch 1, p50) of eager, ONNX fp32 and ONNX int8, in one process.

:class:`RuntimeModel` is the ONNX session shaped like a ``MultiTaskModel`` for ``score``: its
forward runs the graph (and the eager model for a generative task the export leaves out), its
loss and ``predict`` are the eager heads'. ``FILE.json`` beside each ONNX file holds its output
names, so ``veilfed predict --onnx FILE`` can run either.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from veilfed.inference.export import INPUTS, Exported, export, onnx_session, unflatten
from veilfed.inference.measure import p50_ms, session_fn, state_bytes, task_rows
from veilfed.io import write_text_atomic
from veilfed.model import score


class RuntimeModel:
    """An exported model's onnxruntime session, evaluated like the model (module docstring)."""

    training = False

    def __init__(self, model: Any, path: str | Path) -> None:
        self.model = model.eval()
        meta = json.loads(Path(f"{path}.json").read_text())
        self.outputs, self.left_out = meta["outputs"], meta["left_out"]
        self.session = onnx_session(path)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.task_specs, self.tasks = model.task_specs, model.tasks

    def eval(self) -> RuntimeModel:
        return self

    def train(self, mode: bool = True) -> RuntimeModel:
        return self

    def task_heads(self) -> dict[str, Any]:
        return self.model.task_heads()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        feed = {n: batch[n].numpy() for n in INPUTS}
        if "questions" in self.inputs:
            qa = next(s for s in self.task_specs.values() if s.kind == "qa")
            feed["questions"] = batch["targets"][qa.key("questions")].numpy()
        values = [torch.from_numpy(v) for v in self.session.run(None, feed)]
        outputs = unflatten(self.outputs, values)
        if self.left_out:  # generative heads decode from the eager model's own forward
            eager = self.model(batch)
            outputs |= {t: eager[t] for t in self.left_out}
        return outputs

    def loss(self, outputs: dict[str, Any], batch: dict[str, Any]) -> Any:
        return self.model.loss(outputs, batch)

    def predict(self, batch: dict[str, Any], outputs: dict[str, Any] | None = None) -> Any:
        return self.model.predict(batch, outputs if outputs is not None else self(batch))


def quantize_file(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of the ONNX file ``src`` into ``dst`` (and its metadata)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    meta = json.loads(Path(f"{src}.json").read_text())
    meta["quantized"] = "onnxruntime dynamic int8 (weights QInt8)"
    write_text_atomic(Path(f"{dst}.json"), json.dumps(meta, indent=1) + "\n")


def compress_int8(
    model: Any, world: Any, test: Any, baselines: Any, out: Path, reps: int = 30, seed: int = 0
) -> dict[str, Any]:
    """Write ``out/model.onnx`` and ``out/model.int8.onnx`` (``out`` must not exist) and return
    the report (module docstring); ``test`` the held-out loader, ``baselines`` fitted on the
    training clips."""
    out.mkdir(parents=True)
    try:
        fp32, int8 = out / "model.onnx", out / "model.int8.onnx"
        export(model, world, "onnx", fp32)
        quantize_file(fp32, int8)
        before = score(model, test, baselines, bootstrap=200, seed=seed)
        after = score(RuntimeModel(model, int8), test, baselines, bootstrap=200, seed=seed)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # nothing half-written is left behind
        raise
    wrapper = Exported(model, world)
    example = wrapper.example(batch=1)
    with torch.no_grad():
        runs = {"eager": wrapper, "onnx_fp32": session_fn(fp32), "onnx_int8": session_fn(int8)}
        latency = p50_ms(runs, example, reps)
    state = state_bytes(model)
    tasks = task_rows(before, after)
    return {
        "method": "int8",
        "files": {"onnx": str(fp32), "int8": str(int8)},
        "params": sum(p.numel() for p in model.parameters()),
        "bytes": {
            "state_dict": state,
            "onnx_fp32": fp32.stat().st_size,
            "onnx_int8": int8.stat().st_size,
        },
        "latency_p50_ms": {k: round(v, 3) for k, v in latency.items()},
        "speedup_int8_vs_eager": round(latency["eager"] / latency["onnx_int8"], 2),
        "speedup_int8_vs_fp32": round(latency["onnx_fp32"] / latency["onnx_int8"], 2),
        "tasks": tasks,
    }
