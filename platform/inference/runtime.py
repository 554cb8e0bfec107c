"""Where a prediction's forward pass runs: the eager model, or its ONNX export in onnxruntime.

A runner is ``predict(batch) -> {task: evaluation output}``, what ``MultiTaskModel.predict``
gives. :class:`OnnxRunner` exports the model once (:func:`veilfed.inference.export.export`, with
its parity check) into a temporary folder, runs each batch's network in onnxruntime and finishes
the outputs with the eager heads' ``predict``; a task the export leaves out (a generative head)
runs in the eager model on the same batch.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from veilfed.data.synth import WorldConfig
from veilfed.devices import check_device, model_device, resolve, to_device
from veilfed.errors import UsageError
from veilfed.inference.export import INPUTS, export, onnx_session, unflatten

RUNTIMES = ("torch", "onnxruntime")


class EagerRunner:
    """The model itself, on ``device``; predictions come back as CPU tensors."""

    def __init__(self, model: Any, device: torch.device | None = None) -> None:
        self.model = model.to(device) if device is not None else model
        self.device = model_device(self.model)

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> dict[str, Any]:
        preds = self.model.predict(to_device(batch, self.device))
        return to_device(preds, torch.device("cpu"))


class OnnxRunner:
    """The model's ONNX export in onnxruntime (module docstring)."""

    def __init__(
        self,
        model: Any,
        world: WorldConfig,
        path: str | Path | None = None,
        tasks: Sequence[str] | None = None,
    ) -> None:
        self.model = model
        if path is not None:  # an export made before (e.g. int8): FILE and FILE.json
            meta = _meta(Path(path), model)
            try:
                self.session = onnx_session(path)
            except Exception as exc:  # onnxruntime raises its own types for a bad file
                reason = str(exc).splitlines()[0][:120]
                what = f"not an ONNX model onnxruntime runs ({reason})"
                raise UsageError(f"--onnx {path}: {what}") from None
        else:
            with tempfile.TemporaryDirectory() as tmp:
                made = Path(tmp) / "model.onnx"
                meta = export(model, world, "onnx", made)
                self.session = onnx_session(made)  # onnxruntime has read the file; it may go
        self.outputs: list[str] = meta["outputs"]
        wanted = set(tasks) if tasks is not None else set(model.tasks)
        self.left_out: list[str] = [t for t in meta["left_out"] if t in wanted]
        self.inputs = [i.name for i in self.session.get_inputs()]

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> dict[str, Any]:
        feed = {n: batch[n].numpy() for n in INPUTS}
        if "questions" in self.inputs:
            qa = next(s for s in self.model.task_specs.values() if s.kind == "qa")
            feed["questions"] = batch["targets"][qa.key("questions")].numpy()
        values = [torch.from_numpy(v) for v in self.session.run(None, feed)]
        raw = unflatten(self.outputs, values)
        heads = self.model.task_heads()
        preds = {t: heads[t].predict(v) for t, v in raw.items()}
        if self.left_out:
            eager = self.model.predict(batch)
            preds |= {t: eager[t] for t in self.left_out}
        return preds


def _meta(path: Path, model: Any) -> dict[str, Any]:
    """The metadata ``veilfed model export`` wrote beside an ONNX file, checked against
    ``model``: the file must be an ONNX export of a model with the same tasks."""
    hint = "use a file `veilfed model export --format onnx` or `model compress` wrote for MODEL"
    try:
        meta = json.loads(Path(f"{path}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UsageError(f"--onnx {path}: no readable {path.name}.json beside it; {hint}") from None
    if not isinstance(meta, dict) or meta.get("format") != "onnx" or "outputs" not in meta:
        what = "does not describe an ONNX export"
        raise UsageError(f"--onnx {path}: {path.name}.json {what}; {hint}")
    tasks = {name.partition(".")[0] for name in meta["outputs"]} | set(meta.get("left_out", []))
    if tasks != set(model.tasks):
        raise UsageError(
            f"--onnx {path}: exported from a model with tasks {', '.join(sorted(tasks))}, not "
            f"MODEL's {', '.join(model.tasks)}; {hint}"
        )
    return meta


def runner(
    name: str,
    model: Any,
    world: WorldConfig,
    onnx: str | Path | None = None,
    tasks: Sequence[str] | None = None,
    device: str = "auto",
) -> EagerRunner | OnnxRunner:
    """The runner ``--runtime name`` names (``onnx``: an exported file to run instead) for
    ``tasks`` (default: all the model's), on ``--device`` (``veilfed.devices``; ONNX Runtime
    runs on the CPU: ``auto`` means the CPU there and ``cuda`` is refused)."""
    check_device(device)
    if name != "torch" or onnx is not None:
        if device == "cuda":
            raise UsageError(
                "--device cuda: ONNX Runtime runs on the CPU here (its CUDA provider is not "
                "installed); use --runtime torch for the GPU"
            )
        model = model.to("cpu")
    if onnx is not None:
        return OnnxRunner(model, world, onnx, tasks)
    if name == "torch":
        return EagerRunner(model, resolve(device))
    if name == "onnxruntime":
        return OnnxRunner(model, world, tasks=tasks)
    raise UsageError(f"--runtime {name!r}; valid: {', '.join(RUNTIMES)}")
