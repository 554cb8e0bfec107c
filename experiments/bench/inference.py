"""Inference benchmark: the same model run eagerly, as TorchScript, as ONNX in onnxruntime, as
its dynamic int8 quantization and structurally pruned to half of each prunable width (eager and
in onnxruntime), side by side in one process on the same inputs; with a GPU
(``--device auto`` on a machine where torch sees one, or ``cuda``) also eagerly on the GPU.

Per runtime: latency of one window (batch 1) p50 / p95, throughput in windows/s at batch 8, the
real-time factor (seconds of video per second of compute at batch 1: above 1 keeps up with a live
source), the file size of the exported model, and the largest output difference from eager. The
model is the config's (default: experiments/federated.toml, the `make demo` model) with its
initial weights: speed does not depend on training.

    python experiments/bench/inference.py [--config FILE] [--quick] [--device auto|cpu|cuda]

Prints a table and, last, one JSON line of headline figures (ratios are eager / runtime).
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from veilfed.config import load_config
from veilfed.devices import DEVICES, resolve
from veilfed.inference.export import Exported, export
from veilfed.inference.measure import session_fn
from veilfed.inference.prune import prune_widths, pruned_section
from veilfed.inference.quantize import quantize_file
from veilfed.model import create_model

ROOT = Path(__file__).resolve().parents[2]


def timings(fn, inputs, reps: int) -> np.ndarray:
    fn(*inputs)  # warm-up: first-call allocations and graph optimisation
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(*inputs)
        out.append(time.perf_counter() - start)
    return np.array(out)


def _gpu_runner(wrapper: Exported, device: torch.device):
    """Eager on ``device``, inputs copied there and the result waited for (what a caller sees)."""
    gpu = copy.deepcopy(wrapper).to(device)

    def run(*x):
        out = gpu(*(t.to(device) for t in x))
        torch.cuda.synchronize(device)
        return out

    return run


def _pruned(wrapper: Exported) -> Exported:
    """The model with half of each prunable width's channels removed (``model compress
    --method prune --keep 0.5`` before its fine-tuning, which does not change speed)."""
    pruned, changed = prune_widths(wrapper.model, wrapper.world, 0.5)
    model = create_model(pruned_section(wrapper.model.config, changed))
    model.load_state_dict(pruned.state_dict())
    return Exported(model, wrapper.world)


def runners(wrapper: Exported, folder: Path, device: torch.device) -> dict[str, tuple[object, int]]:
    """{name: (callable on torch inputs, bytes of its file: the state dict for eager)}."""
    out: dict[str, tuple[object, int]] = {}
    state = io.BytesIO()
    torch.save(wrapper.model.state_dict(), state)
    with torch.no_grad():
        out["eager"] = (lambda *x: wrapper(*x), len(state.getvalue()))
        for fmt in ("torchscript", "onnx"):
            path = folder / f"model.{fmt}"
            export(wrapper.model, wrapper.world, fmt, path)
            if fmt == "torchscript":
                module = torch.jit.load(str(path))
                out[fmt] = (lambda *x, m=module: m(*x), path.stat().st_size)
            else:
                out["onnxruntime"] = (session_fn(path), path.stat().st_size)
                int8 = folder / "model.int8.onnx"
                quantize_file(path, int8)
                out["onnx_int8"] = (session_fn(int8), int8.stat().st_size)
        pruned = _pruned(wrapper)
        state = io.BytesIO()
        torch.save(pruned.model.state_dict(), state)
        out["pruned"] = (lambda *x: pruned(*x), len(state.getvalue()))
        path = folder / "pruned.onnx"
        export(pruned.model, pruned.world, "onnx", path)
        out["pruned_onnx"] = (session_fn(path), path.stat().st_size)
        if device.type == "cuda":
            out["eager_cuda"] = (_gpu_runner(wrapper, device), len(state.getvalue()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "federated.toml")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="adds eager_cuda")
    args = parser.parse_args()
    device = resolve(args.device)
    torch.manual_seed(0)
    cfg = load_config(args.config)
    world = cfg.world.world_config()
    wrapper = Exported(create_model(cfg), world)
    reps = 10 if args.quick else 50
    one, eight = wrapper.example(batch=1), wrapper.example(batch=8, seed=1)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for name, (fn, size) in runners(wrapper, Path(tmp), device).items():
            single = timings(fn, one, reps)
            batch = timings(fn, eight, max(3, reps // 5))
            rows[name] = {
                "p50_ms": 1000 * float(np.median(single)),
                "p95_ms": 1000 * float(np.percentile(single, 95)),
                "windows_per_s": 8 / float(np.median(batch)),
                "realtime_factor": world.clip_seconds / float(np.median(single)),
                "file_mb": size / 2**20,
            }
    print(
        f"model: {args.config.name} ({sum(p.numel() for p in wrapper.parameters()):,} params), "
        f"window {world.frames} frames {world.height}x{world.width} = {world.clip_seconds:g} s, "
        f"{torch.get_num_threads()} threads"
    )
    header = ("runtime", "p50 ms", "p95 ms", "win/s @8", "x realtime", "MB")
    print("{:<12} {:>8} {:>8} {:>9} {:>10} {:>6}".format(*header))
    for name, r in rows.items():
        print(
            f"{name:<12} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} {r['windows_per_s']:9.1f} "
            f"{r['realtime_factor']:10.1f} {r['file_mb']:6.2f}"
        )
    eager = rows["eager"]
    headline = {
        "config": args.config.name,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        **{f"{n}_p50_ms": round(r["p50_ms"], 2) for n, r in rows.items()},
        **{f"{n}_p95_ms": round(r["p95_ms"], 2) for n, r in rows.items()},
        **{f"{n}_realtime_factor": round(r["realtime_factor"], 1) for n, r in rows.items()},
        **{
            f"speedup_{n}": round(eager["p50_ms"] / r["p50_ms"], 2)
            for n, r in rows.items()
            if n != "eager"
        },
    }
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
