"""One window of one video explained: what ``veilfed explain`` runs.

The video is read exactly as ``veilfed predict`` reads it (``veilfed.inference``: windows of
one clip span, the model's geometry); window ``window`` (0: the first) is explained for one
target by one method, modality ablation runs on it, and with ``out`` the files of
``veilfed.explain.render`` are written into ``out/<video stem>-<task>`` (``-2``, ... when taken).
The result object is documented in docs/explain.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from veilfed.data.dataset import collate
from veilfed.errors import UsageError
from veilfed.explain import render
from veilfed.explain.ablation import ablate
from veilfed.explain.attention import attention_map
from veilfed.explain.attribute import METHODS, attribute
from veilfed.explain.target import pick
from veilfed.inference.inputs import VideoInput, spans_of, windows_dataset, with_windows
from veilfed.inference.media import unique_folder


def explain_window(
    model: Any,
    world: Any,
    item: VideoInput,
    task: str,
    label: str | None = None,
    method: str = "integrated_gradients",
    window: int = 0,
    steps: int = 24,
    out: Path | None = None,
) -> dict[str, Any]:
    """The explanation of window ``window`` of ``item`` (module docstring)."""
    if method not in METHODS:
        raise UsageError(f"--method {method!r}: use {', '.join(METHODS)}")
    if steps < 2:
        raise UsageError(f"--steps {steps}: integrated gradients needs at least 2 steps")
    model.eval()
    item = with_windows(item, world.clip_seconds, None)
    dataset = windows_dataset(item, world, model.task_specs, None)
    if not 0 <= window < len(dataset):
        raise UsageError(
            f"--window {window}: {item.name} has {len(dataset)} window(s) of "
            f"{world.clip_seconds:g} s; give 0 to {len(dataset) - 1}"
        )
    sample = dataset[window]
    batch = collate([sample])
    with torch.no_grad():
        outputs = model(batch)
    target = pick(model, task, label, outputs)
    if method == "attention":
        attr = attention_map(model, batch, target)
    else:
        attr = attribute(model, batch, target, method, steps=steps)
    ablation = ablate(model, batch, target)
    start, end = spans_of(item)[window]
    result = {"source": item.name, "window": window, "start": round(start, 3)}
    result |= {"end": round(end, 3)} | attr.to_json() | {"ablation": ablation, "files": []}
    if out is not None:
        folder = unique_folder(out, item.name, suffix=f"-{task}")
        result["files"] = render.write(folder, attr, ablation, sample["video"], world.fps)
    return result
