"""Starting a model from other weights (``--init-from``) and keeping parts of it fixed (freeze).

:func:`read_weights` reads a local weights file: a veilfed state dict (``torch.save`` of
``model.state_dict()``, read with ``weights_only=True``: no pickled code runs) or torchvision's
``r2plus1d_18`` state dict, whose keys are mapped onto veilfed's ``r2plus1d_18`` video encoder
(``encoders.video.body.*``). That encoder swaps every BatchNorm for a GroupNorm in the same place,
so a BatchNorm's ``weight``/``bias`` become the GroupNorm's affine ``weight``/``bias`` and its
running statistics (``running_mean``, ``running_var``, ``num_batches_tracked``) are dropped:
GroupNorm normalises each sample by its own statistics, so the mapped encoder starts close to,
not equal to, the pretrained one and fine-tuning closes the gap. The classifier (``fc``) has no
counterpart and is dropped too. MLflow URIs are not local files: they are read by
``veilfed.model.saved``.

:func:`init_from` loads every tensor whose name and shape match and reports what it loaded and
skipped; :func:`freeze` turns ``[model] freeze`` (module-name prefixes such as
``"encoders.video"``) into ``requires_grad = False``. ``build_optimizer`` leaves frozen
parameters out and Opacus' ``GradSampleModule`` hooks only modules with trainable parameters, so
DP-SGD computes no per-sample gradient for a frozen module and its noise covers only what trains.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from veilfed.errors import UsageError
from veilfed.model import saved

# The top-level modules of MultiTaskModel, in the order it builds them.
TOP_LEVEL = ("encoders", "fusion", "head_sets", "weighting")
VIDEO_ENCODER = "encoders.video"
_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")
_TV_LAYER = re.compile(r"^layer([1-4])\.(.+)$")


@dataclass
class InitReport:
    """What :func:`init_from` did: tensors loaded, and skipped with the reason."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model tensors the source lacks
    unexpected: list[str] = field(default_factory=list)  # source tensors the model lacks
    mismatched: dict[str, str] = field(default_factory=dict)  # name -> "source vs model shape"
    dropped: list[str] = field(default_factory=list)  # source tensors with no place (BN stats, fc)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "loaded": len(self.loaded),
            "missing": len(self.missing),
            "unexpected": self.unexpected,
            "mismatched": self.mismatched,
            "dropped": len(self.dropped),
        }


def is_torchvision_r2plus1d(state: Mapping[str, Any]) -> bool:
    """torchvision's ``r2plus1d_18`` keys: ``stem.*``, ``layer1..4.*``, ``fc.*``."""
    return "stem.0.weight" in state and any(k.startswith("layer1.") for k in state)


def map_torchvision_r2plus1d(state: Mapping[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """(veilfed state dict of the video encoder, dropped source keys): ``stem.X`` ->
    ``encoders.video.body.0.X``, ``layerN.X`` -> ``encoders.video.body.N.X``; BatchNorm running
    statistics and ``fc`` dropped."""
    mapped: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        layer = _TV_LAYER.match(key)
        if key.rsplit(".", 1)[-1] in _BN_STATS or key.startswith("fc."):
            dropped.append(key)
        elif key.startswith("stem."):
            mapped[f"{VIDEO_ENCODER}.body.0.{key[len('stem.') :]}"] = value
        elif layer is not None:
            mapped[f"{VIDEO_ENCODER}.body.{layer.group(1)}.{layer.group(2)}"] = value
        else:
            dropped.append(key)
    return mapped, dropped


def is_saved_model(source: str | Path) -> bool:
    """An MLflow model URI (``models:/...``, ``runs:/...``) or a saved model's directory."""
    return ":/" in str(source) or Path(source).is_dir()


def local_source(source: str | Path) -> Path:
    """``source`` as a local weights file; a missing path is a one-line UsageError."""
    path = Path(source)
    if not path.is_file():
        raise UsageError(
            f"--init-from {source}: no such weights file, saved-model directory or MLflow model "
            "URI (models:/<id>, runs:/<run id>/model)"
        )
    return path


def read_weights(source: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(state dict in veilfed's names, source keys dropped by the mapping) from a saved model
    (MLflow URI or directory: :func:`veilfed.model.saved.read_state`) or a local weights file
    (a veilfed state dict, or torchvision's r2plus1d_18 mapped by
    :func:`map_torchvision_r2plus1d`)."""
    if is_saved_model(source):
        return saved.read_state(str(source)), []
    path = local_source(source)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a file that is not a state dict
        raise UsageError(
            f"--init-from {source}: not a torch state dict ({type(exc).__name__}); save one "
            "with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"--init-from {source}: not a state dict of tensors")
    if is_torchvision_r2plus1d(state):
        return map_torchvision_r2plus1d(state)
    return dict(state), []


def init_from(
    model: nn.Module, state: Mapping[str, Any], source: str = "weights", dropped: Any = ()
) -> InitReport:
    """Load the tensors of ``state`` (tensors or arrays) whose names and shapes match ``model``'s;
    the rest of ``model`` keeps its own initialisation. Nothing matching is a UsageError."""
    own = model.state_dict()
    report = InitReport(str(source), dropped=list(dropped))
    chosen: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        tensor = torch.as_tensor(value)
        if name not in own:
            report.unexpected.append(name)
        elif tuple(tensor.shape) != tuple(own[name].shape):
            report.mismatched[name] = f"{tuple(tensor.shape)} vs {tuple(own[name].shape)}"
        else:
            chosen[name] = tensor.to(own[name].dtype)
    if not chosen:
        raise UsageError(
            f"--init-from {source}: no tensor matches the model in name and shape "
            f"({len(report.unexpected)} unknown, {len(report.mismatched)} of another shape); "
            "check [model] (e.g. encoders.video = 'r2plus1d_18' for torchvision weights)"
        )
    with torch.no_grad():
        for name, tensor in chosen.items():
            own[name].copy_(tensor)
    report.loaded = sorted(chosen)
    report.missing = sorted(set(own) - set(chosen))
    return report


def check_freeze(prefixes: list[str], where: str = "model.freeze") -> None:
    """Each prefix starts with a top-level module of MultiTaskModel (the full name is checked
    against the built model by :func:`freeze`)."""
    for i, prefix in enumerate(prefixes):
        if prefix.split(".", 1)[0] not in TOP_LEVEL:
            raise UsageError(
                f"{where}[{i}]: {prefix!r} is not a module of the model; valid top-level "
                f"modules: {', '.join(TOP_LEVEL)}"
            )


def freeze(model: nn.Module, prefixes: list[str], where: str = "model.freeze") -> list[str]:
    """Set ``requires_grad = False`` on every parameter under each module prefix; returns the
    frozen parameter names. A prefix naming no module is a one-line UsageError listing what the
    module above it holds."""
    check_freeze(prefixes, where)
    modules = dict(model.named_modules())
    for i, prefix in enumerate(prefixes):
        if prefix not in modules:
            parent = prefix.rsplit(".", 1)[0] if "." in prefix else ""
            while parent and parent not in modules:
                parent = parent.rsplit(".", 1)[0] if "." in parent else ""
            holder = modules[parent] if parent else model
            names = ", ".join(f"{parent}.{n}" if parent else n for n, _ in holder.named_children())
            raise UsageError(
                f"{where}[{i}]: {prefix!r} names no module of this model; valid here: {names}"
            )
    frozen = []
    for name, param in model.named_parameters():
        if any(name.startswith(f"{p}.") for p in prefixes):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen
