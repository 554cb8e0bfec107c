"""A trained model exported for serving: ONNX (run by onnxruntime), TorchScript or a
``torch.export`` program (``.pt2``), checked against the eager model before it is kept.

:class:`Exported` is the model as a function of plain tensors, the graph every format holds::

    inputs : video [B, T, 3, H, W] float32 in [0, 1], audio [B, S] float32, text [B, L] int64,
             modality_mask [B, 3] bool, and questions [B, Q, Lq] int64 when a qa task exists
    outputs: each non-generative task's head output, in task order; a head with several
             (detection's boxes and logits) gives ``<task>.<field>`` for each

The heads' ``predict`` (rounding pixels to 8 bits, scores to levels) stays outside the graph:
:func:`unflatten` rebuilds the outputs and the eager heads finish them, so an exported model's
results go through the same code as the eager model's, and the parity check compares unrounded
numbers.

``T, H, W`` and the audio length ``S`` are the clip geometry the model was trained on
(``input.json``); the batch dimension is dynamic in ONNX. A generative head (caption) decodes
token by token with data-dependent stopping and is left out; :func:`export` names what it left
out. Beside ``FILE`` it writes ``FILE.json``: the format, the input and output names and shapes,
the tasks left out, the geometry and the largest absolute difference of each output from the
eager model on a fixed random clip, which must be at most :data:`TOLERANCE`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from veilfed.data import schema
from veilfed.data.synth import WorldConfig
from veilfed.data.targets import placeholder
from veilfed.errors import CheckFailed, UsageError
from veilfed.io import atomic_writer, check_new_output, write_text_atomic

FORMATS = ("onnx", "torchscript", "pt2")
TOLERANCE = 1e-4
INPUTS = ("video", "audio", "text", "modality_mask")


class Exported(nn.Module):
    """``model`` as a function of plain tensors (module docstring)."""

    def __init__(self, model: nn.Module, world: WorldConfig) -> None:
        super().__init__()
        self.model = model.eval()
        self.world = world
        heads = model.task_heads()
        self.tasks = [t for t, h in heads.items() if not h.generative]
        self.left_out = [t for t, h in heads.items() if h.generative]
        self.qa = next((s for s in model.task_specs.values() if s.kind == "qa"), None)
        targets: dict[str, Tensor] = {}
        for spec in model.task_specs.values():
            targets |= placeholder(spec, world.frames, world.height, world.width)
        for key, value in targets.items():
            self.register_buffer(f"_target_{_safe(key)}", value.unsqueeze(0), persistent=False)
        self._target_keys = list(targets)
        self._names: list[str] | None = None
        self.eval()  # an inference wrapper: exporters read its own mode too

    @property
    def input_names(self) -> list[str]:
        return [*INPUTS, *(["questions"] if self.qa is not None else [])]

    def example(self, batch: int = 1, seed: int = 0) -> tuple[Tensor, ...]:
        """A fixed random input of the model's geometry."""
        w, g = self.world, torch.Generator().manual_seed(seed)
        vocab = self.model.config.vocab_size or 300
        video = torch.rand(batch, w.frames, 3, w.height, w.width, generator=g)
        audio = (torch.rand(batch, w.audio_samples, generator=g) - 0.5) * 0.2
        text = torch.randint(4, vocab, (batch, schema.MAX_TEXT_TOKENS), generator=g)
        mask = torch.ones(batch, len(schema.MODALITIES), dtype=torch.bool)
        out = [video, audio, text, mask]
        if self.qa is not None:
            q = self.qa.options["questions"]
            out.append(torch.randint(4, vocab, (batch, q, schema.MAX_QUESTION_TOKENS), generator=g))
        return tuple(out)

    def output_names(self) -> list[str]:
        """The flat output names (one forward pass on the example, the first time only)."""
        if self._names is not None:
            return list(self._names)
        names = []
        with torch.no_grad():
            preds = self._preds(*self.example())
        for task in self.tasks:
            value = preds[task]
            names += [f"{task}.{k}" for k in value] if isinstance(value, dict) else [task]
        self._names = names
        return list(names)

    def batch(self, *inputs: Tensor | None) -> dict[str, Any]:
        """The model's batch from the plain inputs, placeholder targets included."""
        batch: dict[str, Any] = dict(zip(INPUTS, inputs[:4], strict=True))
        b = batch["video"].shape[0]
        targets = {k: getattr(self, f"_target_{_safe(k)}") for k in self._target_keys}
        targets = {k: v.expand(b, *v.shape[1:]) for k, v in targets.items()}
        if self.qa is not None:
            targets[self.qa.key("questions")] = inputs[4]
        batch["targets"] = targets
        return batch

    def _preds(self, *inputs: Tensor | None) -> dict[str, Any]:
        outputs = self.model(self.batch(*inputs))
        return {t: outputs[t] for t in self.tasks}

    def forward(
        self,
        video: Tensor,
        audio: Tensor,
        text: Tensor,
        modality_mask: Tensor,
        questions: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        preds = self._preds(video, audio, text, modality_mask, questions)
        flat: list[Tensor] = []
        for task in self.tasks:
            value = preds[task]
            flat += list(value.values()) if isinstance(value, dict) else [value]
        return tuple(flat)


def unflatten(names: list[str], values: list[Any]) -> dict[str, Any]:
    """``{task: output}`` from an export's flat outputs named as :meth:`Exported.output_names`."""
    out: dict[str, Any] = {}
    for name, value in zip(names, values, strict=True):
        task, dot, field = name.partition(".")
        if dot:
            out.setdefault(task, {})[field] = value
        else:
            out[task] = value
    return out


def _safe(key: str) -> str:
    return re.sub(r"\W", "_", key)


def export(model: nn.Module, world: WorldConfig, fmt: str, out: str | Path, force: bool = False):
    """Export ``model`` to ``out`` in ``fmt`` (module docstring); returns the metadata written
    to ``out.json``. The file is kept only when every output matches the eager model."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}; valid: {', '.join(FORMATS)}")
    out = Path(out)
    check_new_output(out, force)
    check_new_output(out.with_name(out.name + ".json"), force)
    wrapper = Exported(model, world)
    example = wrapper.example(batch=2)  # a batch of 1 would let the exporters fix the batch size
    with torch.no_grad():
        eager = [t.float().numpy() for t in wrapper(*example)]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.export{out.suffix}")  # torch.export wants its suffix
    try:
        _write(wrapper, example, fmt, tmp)
        check = wrapper.example(batch=3, seed=1)
        with torch.no_grad():
            expected = [t.float().numpy() for t in wrapper(*check)]
        got = run_exported(tmp, fmt, check)
        if len(got) != len(eager):
            raise CheckFailed(
                f"{out}: the {fmt} export gives {len(got)} outputs, the eager model {len(eager)}"
            )
        diffs = {
            name: float(np.abs(g.astype(np.float64) - e).max()) if e.size else 0.0
            for name, g, e in zip(wrapper.output_names(), got, expected, strict=True)
        }
        worst = max(diffs, key=diffs.__getitem__)
        if diffs[worst] > TOLERANCE:
            raise CheckFailed(
                f"{out}: the {fmt} export differs from the eager model by {diffs[worst]:.2e} on "
                f"output {worst!r} (at most {TOLERANCE:g} allowed); not written"
            )
        with atomic_writer(out, overwrite=force) as fh:
            fh.write(tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    meta = {
        "format": fmt,
        "inputs": {
            n: ["batch", *t.shape[1:]] for n, t in zip(wrapper.input_names, example, strict=True)
        },
        "outputs": wrapper.output_names(),
        "left_out": wrapper.left_out,
        "geometry": {k: getattr(world, k) for k in ("frames", "height", "width", "fps")},
        "max_abs_diff": diffs,
        "tolerance": TOLERANCE,
    }
    text = json.dumps(meta, indent=1) + "\n"
    write_text_atomic(out.with_name(out.name + ".json"), text, overwrite=force)
    return meta


def _write(wrapper: Exported, example: tuple[Tensor, ...], fmt: str, path: Path) -> None:
    with torch.no_grad():
        if fmt == "onnx":
            _onnx(wrapper, example, path)
        elif fmt == "torchscript":
            torch.jit.save(torch.jit.trace(wrapper, example, check_trace=False), str(path))
        else:
            program = torch.export.export(wrapper, example, dynamic_shapes=_batch_dim(wrapper))
            torch.export.save(program, str(path))


def _batch_dim(wrapper: Exported) -> dict[str, dict[int, Any]]:
    """Every input's first dimension is the batch, of any size."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    return {name: {0: batch} for name in wrapper.input_names}


def _onnx(wrapper: Exported, example: tuple[Tensor, ...], path: Path) -> None:
    shapes = _batch_dim(wrapper)
    try:
        program = torch.onnx.export(
            wrapper,
            example,
            dynamo=True,
            input_names=wrapper.input_names,
            output_names=wrapper.output_names(),
            dynamic_shapes=shapes,
            verbose=False,
        )
    except Exception as exc:  # torch.onnx raises its own error types per failing step
        raise UsageError(f"ONNX export failed: {_unsupported(exc, wrapper, example)}") from None
    program.save(str(path))


def _unsupported(exc: BaseException, wrapper: Exported, example: tuple[Tensor, ...]) -> str:
    """The failing op of an export error and the module it sits in."""
    text = f"{exc} {exc.__cause__ or ''}"
    op = re.search(r"op='([^']+)'", text)
    if op is None:
        return str(exc).splitlines()[0][:200]
    module = _module_of(wrapper, example, op.group(1))
    where = f" in module {module}" if module else ""
    hint = "replace that op, or export --format torchscript"
    return f"no ONNX translation for {op.group(1)}{where}; {hint}"


def _module_of(wrapper: Exported, example: tuple[Tensor, ...], op: str) -> str | None:
    """The innermost module (its path in the model) that calls ``op``, from the program
    ``torch.export`` makes before the ONNX translation."""
    try:
        program = torch.export.export(wrapper, example, dynamic_shapes=_batch_dim(wrapper))
    except Exception:  # the op is named anyway; the module is a courtesy
        return None
    name = op.removeprefix("aten.").split(".")[0]
    for node in program.graph.nodes:
        if node.op == "call_function" and name in str(node.target):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path = list(stack.values())[-1][0]
                return re.sub(r"^L\['self'\]\.?|^model\.", "", path).removeprefix("model.")
    return None


def run_exported(path: Path, fmt: str, inputs: tuple[Tensor, ...]) -> list[np.ndarray]:
    """The outputs of an exported file on ``inputs``: ONNX through onnxruntime (CPU)."""
    if fmt == "onnx":
        session = onnx_session(path)
        names = [i.name for i in session.get_inputs()]
        feed = {n: t.numpy() for n, t in zip(names, inputs, strict=True)}
        return [np.asarray(o, dtype=np.float32) for o in session.run(None, feed)]
    with torch.no_grad():
        if fmt == "torchscript":
            outputs = torch.jit.load(str(path))(*inputs)
        else:
            outputs = torch.export.load(str(path)).module()(*inputs)
    return [o.float().numpy() for o in outputs]


def onnx_session(path: str | Path) -> Any:
    """An onnxruntime CPU session of the ONNX file at ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
