"""Typed experiment configuration loaded from TOML (experiments/*.toml).

Sections: [world], [model] (+ [model.encoders], [model.encoder_kwargs.<modality>],
[model.fusion_kwargs], [model.head_kwargs.<task>], [model.tasks]), [train], [privacy], [tracking],
and [federated] / [he] for the federated layer. Every field is type-checked; a wrong type or an
unknown field is a one-line :class:`UsageError` naming the file and the field.

Adding a section: write a dataclass with defaults and add it as a field of
:class:`ExperimentConfig` (``federated`` and ``he`` are plain dicts until their owners type them).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veilfed.data import schema
from veilfed.errors import UsageError

ACCOUNTANTS = ("rdp", "prv")  # rigorous bounds; Opacus' gdp is a CLT approximation


@dataclass
class WorldSection:
    """The synthetic world (a subset of ``veilfed.data.synth.WorldConfig`` plus dataset sizes)."""

    clips: int = 64
    eval_clips: int = 16
    frames: int = schema.DEFAULT_FRAMES
    size: int = schema.DEFAULT_SIZE
    fps: int = schema.DEFAULT_FPS
    seed: int = 0
    p_missing_audio: float = 0.0
    p_missing_text: float = 0.0
    p_degraded: float = 0.5
    p_forbidden: float = 0.2

    def world_config(self, seed: int | None = None) -> Any:
        """The data layer's ``WorldConfig`` for this section (``seed`` overrides)."""
        from veilfed.data.synth import WorldConfig

        return WorldConfig(
            frames=self.frames,
            height=self.size,
            width=self.size,
            fps=self.fps,
            seed=self.seed if seed is None else seed,
            p_missing_audio=self.p_missing_audio,
            p_missing_text=self.p_missing_text,
            p_degraded=self.p_degraded,
            p_forbidden=self.p_forbidden,
        )


@dataclass
class ModelSection:
    """Encoders per modality ("" = modality not used), fusion, task weights, loss weighting."""

    dim: int = 64
    pixel_dim: int = 64
    encoders: dict[str, str] = field(
        default_factory=lambda: {
            "video": "conv2p1d",
            "audio": "logmel_conv",
            "text": "text_transformer",
        }
    )
    encoder_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    fusion: str = "concat"
    fusion_kwargs: dict[str, Any] = field(default_factory=dict)
    tasks: dict[str, float] = field(default_factory=lambda: dict.fromkeys(schema.TASKS, 1.0))
    head_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    loss_weighting: str = "fixed"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    vocab_size: int | None = None


@dataclass
class TrainSection:
    batch_size: int = 16
    optimizer: str = "sgd"  # veilfed.train.OPTIMIZERS: sgd, adam, adamw
    lr: float = 2e-3
    weight_decay: float = 0.0
    momentum: float = 0.0  # sgd only
    epochs: int = 1
    steps: int = 0  # > 0: train this many steps instead of ``epochs``
    augmentations: list[str | dict[str, Any]] = field(default_factory=list)  # veilfed.augment
    seed: int = 0
    threads: int = 0  # torch threads; 0 = leave torch's default


@dataclass
class PrivacySection:
    """DP-SGD. Give ``noise_multiplier`` or (``epsilon``, ``delta``) for the whole training."""

    enabled: bool = False
    epsilon: float | None = None
    delta: float = 1e-5
    noise_multiplier: float | None = None
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    mode: str = "auto"  # Opacus grad_sample_mode: "hooks", "ghost" or "auto" (the faster one)


@dataclass
class TrackingSection:
    experiment: str = ""  # MLflow experiment; "" = the config's name


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    world: WorldSection = field(default_factory=WorldSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    privacy: PrivacySection = field(default_factory=PrivacySection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    federated: dict[str, Any] = field(default_factory=dict)
    he: dict[str, Any] = field(default_factory=dict)
    canary: dict[str, Any] = field(default_factory=dict)  # veilfed.privacy.canary validates it


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` converted to ``tp`` or raise a one-line UsageError naming ``where``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check(value, arg, where)
            except UsageError as exc:
                errors.append(exc)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UsageError(f"{where}: expected a table, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise UsageError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)
        return [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{where}: expected a table, got {type(value).__name__} {value!r}")
        _, item = typing.get_args(tp)
        return {str(k): _check(v, item, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise UsageError(f"{where}: expected {tp.__name__}, got bool {value!r}")
    if not isinstance(value, tp):
        raise UsageError(
            f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
        )
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise UsageError(f"{where}: unknown field {unknown[0]!r}; valid: {', '.join(names)}")
    kwargs = {k: _check(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def parse_config(data: dict[str, Any], source: str, name: str = "experiment") -> ExperimentConfig:
    """Typed config from a parsed TOML table; ``source`` names the file in error messages."""
    data = dict(data)
    data.setdefault("name", name)
    try:
        cfg = _build(ExperimentConfig, data, "")
        validate(cfg)
    except UsageError as exc:
        raise UsageError(f"{source}: {exc}") from None
    return cfg


def read_toml(path: Path, hint: str = "") -> dict[str, Any]:
    """A config file's TOML; a one-line error naming the file (``hint`` says what to fix)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such config file{hint}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read ({exc}){hint}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML ({exc}){hint}") from None


def load_config(path: str | Path) -> ExperimentConfig:
    """Load and validate ``path`` (TOML); the config's name defaults to the file's stem."""
    path = Path(path)
    return parse_config(read_toml(path), str(path), name=path.stem)


def validate(cfg: ExperimentConfig) -> None:
    """Cross-field checks: registry names, required modalities, value ranges."""
    import veilfed.model  # noqa: F401  (fills the registries)
    from veilfed.model.registry import ENCODERS, FUSIONS, HEADS, LOSSES
    from veilfed.train import check_optimizer

    m = cfg.model
    for modality, name in m.encoders.items():
        if modality not in schema.MODALITIES:
            raise UsageError(
                f"model.encoders.{modality}: unknown modality; "
                f"valid: {', '.join(schema.MODALITIES)}"
            )
        if name:
            try:
                enc = ENCODERS.get(name)
            except UsageError as exc:
                raise UsageError(f"model.encoders.{modality}: {exc}") from None
            if enc.modality != modality:
                raise UsageError(
                    f"model.encoders.{modality}: {name!r} encodes {enc.modality}, not {modality}"
                )
    used = [k for k in schema.MODALITIES if m.encoders.get(k)]
    if not used:
        raise UsageError("model.encoders: configure at least one encoder")
    for key, reg in (("fusion", FUSIONS), ("loss_weighting", LOSSES)):
        try:
            reg.get(getattr(m, key))
        except UsageError as exc:
            raise UsageError(f"model.{key}: {exc}") from None
    if not m.tasks:
        raise UsageError(f"model.tasks: configure at least one task; valid: {', '.join(HEADS)}")
    for task, weight in m.tasks.items():
        try:
            head = HEADS.get(task)
        except UsageError as exc:
            raise UsageError(f"model.tasks.{task}: {exc}") from None
        missing = [r for r in head.requires if r not in used]
        if missing:
            raise UsageError(
                f"model.tasks.{task}: needs the {', '.join(missing)} encoder; "
                f"set model.encoders.{missing[0]}"
            )
        if weight < 0:
            raise UsageError(f"model.tasks.{task}: weight must be >= 0, got {weight}")
    fusion_requires = FUSIONS.get(m.fusion).requires
    missing = [r for r in fusion_requires if r not in used]
    if missing:
        raise UsageError(
            f"model.fusion: {m.fusion!r} needs the {', '.join(missing)} encoder; "
            f"set model.encoders.{missing[0]}"
        )
    for section, key in (("train", "batch_size"), ("train", "epochs"), ("world", "clips")):
        if getattr(getattr(cfg, section), key) < 1:
            raise UsageError(f"{section}.{key}: must be >= 1")
    if cfg.world.frames % 2 or cfg.world.size % 8:
        raise UsageError(
            f"world: frames ({cfg.world.frames}) must be even and size ({cfg.world.size}) "
            "a multiple of 8 (the video encoder's strides)"
        )
    _validate_augmentations(cfg.train.augmentations)
    check_optimizer(cfg.train)
    for section, key in (("world", "seed"), ("train", "seed")):
        if getattr(getattr(cfg, section), key) < 0:
            raise UsageError(f"{section}.{key}: must be >= 0")
    _validate_privacy(cfg.privacy)


def check_dp_target(epsilon: float | None, delta: float, where: str = "privacy") -> None:
    """A DP target is meaningful only with ε > 0 (``inf``: no DP) and δ in (0, 1)."""
    if epsilon is not None and not epsilon > 0:
        raise UsageError(f"{where}.epsilon: must be > 0 (got {epsilon:g})")
    if not 0 < delta < 1:
        raise UsageError(f"{where}.delta: must be in (0, 1) (got {delta:g})")


def check_delta_for(delta: float, n: int, where: str = "privacy", what: str = "") -> None:
    """δ < 1/n for a dataset of ``n`` examples: at δ ≥ 1/n releasing one example whole is DP."""
    if n < 1 or delta >= 1 / n:
        raise UsageError(
            f"{where}.delta {delta:g} must be < 1/n = {1 / max(n, 1):.3g} (n = {n}"
            f"{', ' + what if what else ''}); lower delta"
        )


def _validate_privacy(p: PrivacySection) -> None:
    if p.mode not in ("auto", "hooks", "ghost"):
        raise UsageError(f"privacy.mode: {p.mode!r}; valid: auto, ghost, hooks")
    if p.accountant not in ACCOUNTANTS:
        raise UsageError(
            f"privacy.accountant: {p.accountant!r}; valid: {', '.join(ACCOUNTANTS)} "
            "(gdp is an approximation, not a bound)"
        )
    check_dp_target(p.epsilon, p.delta)
    if p.noise_multiplier is not None and not 0 < p.noise_multiplier < math.inf:
        raise UsageError(
            f"privacy.noise_multiplier: must be > 0 and finite (got {p.noise_multiplier:g})"
        )
    if p.enabled and p.noise_multiplier is None and p.epsilon is None:
        raise UsageError("privacy: enabled needs noise_multiplier or epsilon")
    if p.enabled and p.noise_multiplier is None and p.epsilon == math.inf:
        raise UsageError(
            "privacy.epsilon: inf means no DP; set enabled = false or a finite epsilon"
        )
    if not 0 < p.max_grad_norm < math.inf:
        raise UsageError("privacy.max_grad_norm: must be > 0 and finite")


def _validate_augmentations(specs: list[str | dict[str, Any]]) -> None:
    from veilfed.augment import build_augmentations

    try:
        build_augmentations(specs)
    except UsageError as exc:
        raise UsageError(f"train.augmentations: {exc}") from None
