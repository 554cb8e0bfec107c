"""A trained model with whole channels removed, fine-tuned, and measured against it.

What is removed. A component declares the widths internal to it that can lose channels
(``prunable_widths()``: the ``conv2p1d`` video encoder's ``width``, the concat fusion's
``hidden``, the pixel decoder's ``pixel_dim``); each is a field of the ``[model]`` section:
``encoder_kwargs.<modality>.<name>``, ``fusion_kwargs.<name>`` or ``<name>``. Of each, ``keep``
of the channels stay (rounded down to a multiple of 8 and at least 8, which keeps GroupNorm's 8
groups whole; a width already that small is left). torch-pruning's dependency graph, traced
through the whole model (every head's output, generative ones included), finds each layer that
reads those channels; the channels with the smallest L2 norm over all of them
(``GroupMagnitudeImportance``) go. Tensors shrink, so the model does less work, unlike masks.

Persistence. The pruned weights are loaded, strictly, into the model that the teacher's
``[model]`` section builds with the smaller fields: a shape that the section cannot express is
refused there. The result is a plain veilfed model (saved, logged, registered and predicted
with like any other), then fine-tuned to match the teacher on the training clips
(:func:`veilfed.inference.distill.finetune`, which reads those clips in the clear and without
DP) and measured beside it (:func:`veilfed.inference.distill.compare`).
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from veilfed.errors import UsageError
from veilfed.inference.distill import compare, finetune
from veilfed.inference.export import Exported
from veilfed.inference.heldout import Clips
from veilfed.model import create_model
from veilfed.model.saved import build, cpu_state

Path = tuple[str, ...]  # a field of the [model] section, e.g. ("encoder_kwargs", "video", "width")


class _Everything(nn.Module):
    """The model as a function of plain tensors returning every task's output, so the traced
    graph reaches every head (``Exported`` returns the non-generative ones only)."""

    def __init__(self, exported: Exported) -> None:
        super().__init__()
        self.exported = exported

    def forward(self, *inputs: torch.Tensor) -> dict[str, Any]:
        return self.exported.model(self.exported.batch(*inputs))


def prunable(model: Any) -> dict[Path, list[nn.Module]]:
    """Every declared width of ``model`` (module docstring) and the layers that produce it."""
    found: dict[Path, list[nn.Module]] = {}
    parts: list[tuple[Path, Any]] = [(("encoder_kwargs", m), e) for m, e in model.encoders.items()]
    parts.append((("fusion_kwargs",), model.fusion))
    parts += [((), s.decoder) for s in model.head_sets if s.decoder is not None]
    for prefix, part in parts:
        for name, layers in part.prunable_widths().items():
            found.setdefault((*prefix, name), []).extend(layers)
    return found


def _channels(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.modules.conv._ConvNd) else layer.out_features


def _prune_fn(layer: nn.Module) -> Any:
    if isinstance(layer, nn.modules.conv._ConvNd):
        return tp.prune_conv_out_channels
    return tp.prune_linear_out_channels


def check_keep(keep: float) -> None:
    if not 0.0 < keep < 1.0:
        raise UsageError(f"--keep {keep}: give the fraction of channels to keep, in (0, 1)")


def kept(channels: int, keep: float) -> int:
    """How many of ``channels`` stay at fraction ``keep`` (module docstring)."""
    return min(channels, max(8, int(channels * keep) // 8 * 8))


def _prune(
    model: Any, widths: dict[Path, list[nn.Module]], world: Any, keep: float
) -> dict[str, list[int]]:
    exported = Exported(model, world)
    graph = tp.DependencyGraph().build_dependency(
        _Everything(exported), example_inputs=exported.example()
    )
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    changed: dict[str, list[int]] = {}
    for path, layers in widths.items():
        n = _channels(layers[0])
        k = kept(n, keep)
        if k >= n:
            continue
        for layer in layers:
            fn = _prune_fn(layer)
            scores = importance(graph.get_pruning_group(layer, fn, idxs=list(range(n))))
            drop = torch.argsort(scores)[: n - k].tolist()
            graph.get_pruning_group(layer, fn, idxs=drop).prune()
        changed[".".join(path)] = [n, k]
    return changed


def prune_widths(model: Any, world: Any, keep: float) -> tuple[Any, dict[str, list[int]]]:
    """(a pruned copy of ``model``, ``{"a.field.path": [before, after]}``); ``model`` is not
    changed."""
    check_keep(keep)
    pruned = build(model.config, cpu_state(model))  # a fresh copy: no cached activations
    widths = prunable(pruned)
    if not widths:
        raise UsageError(
            "the model declares no prunable width (conv2p1d video width, concat fusion hidden, "
            "pixel_dim): compress it with --method distill or int8"
        )
    # The tracer reads autograd's graph (so it needs grad on, whatever the caller set) and
    # warns about its recursion limit on reshapes.
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")
        changed = _prune(pruned, widths, world, keep)
    if not changed:
        raise UsageError(
            f"--keep {keep} removes no channel: the prunable widths "
            f"({', '.join('.'.join(p) for p in widths)}) are at most 8 or the fraction rounds to "
            "all of them; give a smaller --keep"
        )
    return pruned, changed


def pruned_section(section: Any, changed: dict[str, list[int]]) -> Any:
    """The ``[model]`` section with each changed field set to its new width."""
    fields = {"encoder_kwargs": copy.deepcopy(section.encoder_kwargs)}
    fields["fusion_kwargs"] = copy.deepcopy(section.fusion_kwargs)
    for dotted, (_, after) in changed.items():
        path = dotted.split(".")
        if len(path) == 1:
            fields[path[0]] = after
        elif path[0] == "fusion_kwargs":
            fields["fusion_kwargs"][path[1]] = after
        else:
            fields["encoder_kwargs"].setdefault(path[1], {})[path[2]] = after
    return dataclasses.replace(section, **fields)


def prune_model(
    teacher: Any, cfg: Any, keep: float, clips: Clips, epochs: int, reps: int = 30
) -> tuple[Any, Any, dict[str, Any]]:
    """(student, its experiment config, report) (module docstring)."""
    pruned, changed = prune_widths(teacher, cfg.world.world_config(), keep)
    student_cfg = dataclasses.replace(cfg, model=pruned_section(teacher.config, changed))
    student = create_model(student_cfg)
    try:
        student.load_state_dict(pruned.state_dict())
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise UsageError(
            f"pruning {', '.join(changed)} left shapes the [model] section cannot express "
            f"({first[:160]}); compress with --method distill instead"
        ) from None
    finetune(teacher, student, cfg, clips.train, epochs)
    report = {
        "method": "prune",
        "keep": keep,
        "widths": changed,
        "epochs": epochs,
        **compare(teacher, student, cfg, clips.test, clips.baselines, reps),
    }
    return student, student_cfg, report
