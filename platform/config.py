"""Typed experiment configuration loaded from TOML (experiments/*.toml).

Sections: [world], [model] (+ [model.encoders], [model.encoder_kwargs.<modality>],
[model.fusion_kwargs], [model.head_kwargs.<task>], [model.tasks]), [train], [privacy], [tracking],
[federated] / [he] for the federated layer (``veilfed.federation.sections``) and [canary] for the
one-run privacy audit (``veilfed.privacy.canary``). :func:`load_config` is the one loader: it
reads the file once, types every section (:mod:`veilfed.tables`) and validates the whole config
once; a wrong type, an unknown field or a value out of range is a one-line :class:`UsageError`
naming the file and the ``section.field``.

Adding a section: write a dataclass with defaults (and a ``from_dict(table, where)`` classmethod
if it validates itself) and add it as a field of :class:`ExperimentConfig`.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veilfed.data import schema
from veilfed.devices import check_device
from veilfed.errors import UsageError
from veilfed.federation.sections import FederatedConfig, HEConfig
from veilfed.privacy.canary import CanarySettings
from veilfed.privacy.targets import check_dp_target
from veilfed.robust.settings import AdversarialSettings, check_model
from veilfed.selection import check_select_metric
from veilfed.tables import build
from veilfed.tasks import TaskSpec, task_specs

ACCOUNTANTS = ("rdp", "prv")  # rigorous bounds; Opacus' gdp is a CLT approximation


@dataclass
class WorldSection:
    """The synthetic world (a subset of ``veilfed.data.synth.WorldConfig`` plus dataset sizes)."""

    clips: int = 64
    eval_clips: int = 16
    val_clips: int = 32  # `veilfed train`'s validation clips (best epoch, early stopping)
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
    # {name: weight} for the synthetic preset's tasks, or {name: table} declaring a task's kind,
    # classes and weight (veilfed.tasks); task_specs() resolves both.
    tasks: dict[str, float | dict[str, Any]] = field(
        default_factory=lambda: dict.fromkeys(schema.TASKS, 1.0)
    )
    head_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    loss_weighting: str = "fixed"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    vocab_size: int | None = None
    # Module-name prefixes of MultiTaskModel kept fixed (e.g. "encoders.video"): no gradient, no
    # per-sample gradient under DP, not in the optimizer (veilfed.model.init.freeze).
    freeze: list[str] = field(default_factory=list)

    def task_specs(self) -> dict[str, TaskSpec]:
        """The declared tasks, ``{name: TaskSpec}`` in config order (``veilfed.tasks``)."""
        return task_specs(self.tasks)


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
    # The lr schedule over the run's optimizer steps (veilfed.schedule) and plain-loop clipping.
    schedule: str = "constant"  # constant | cosine | onecycle
    warmup_fraction: float = 0.0  # share of the run's steps warming up (onecycle: 0 -> 0.3)
    min_lr: float = 0.0  # where cosine and onecycle end
    clip_grad_norm: float = 0.0  # > 0: clip the batch gradient's total norm (non-private only)
    select_metric: str = "loss"  # veilfed.selection: "loss" or "<task>/<metric>", held out
    patience: int = 0  # stop after this many evaluations without improvement; 0 = never
    device: str = "auto"  # veilfed.devices: auto | cpu | cuda (--device overrides)
    # PGD adversarial training, e.g. { eps = 0.03, steps = 3, modality = "video" } (off: None).
    adversarial: AdversarialSettings | None = None


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
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    he: HEConfig = field(default_factory=HEConfig)
    canary: CanarySettings = field(default_factory=CanarySettings)

    def to_table(self) -> dict[str, Any]:
        """The config as the table it parses from: ``parse_config(cfg.to_table(), ...) == cfg``
        (what a run sends its clients as ``RunSettings.config``)."""
        table = dataclasses.asdict(self)
        for path in ("secret_path", "public_path"):  # the run setup's, never a config's
            del table["he"][path]
        return table


def parse_config(
    data: dict[str, Any],
    source: str,
    name: str = "experiment",
    overrides: dict[str, dict[str, Any]] | None = None,
) -> ExperimentConfig:
    """Typed config from a parsed TOML table; ``source`` names the file in error messages.

    ``overrides`` (section -> fields, e.g. ``{"federated": {"clients": 8}}`` from command-line
    flags) replace the table's fields before anything is typed or validated.
    """
    data = dict(data)
    data.setdefault("name", name)
    for section, fields in (overrides or {}).items():
        given = data.get(section, {})
        data[section] = {**given, **fields} if isinstance(given, dict) else given
    try:
        cfg = build(ExperimentConfig, data, "")
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


def load_config(
    path: str | Path, overrides: dict[str, dict[str, Any]] | None = None
) -> ExperimentConfig:
    """Load and validate ``path`` (TOML) with ``overrides`` (see :func:`parse_config`); the
    config's name defaults to the file's stem."""
    path = Path(path)
    return parse_config(read_toml(path), str(path), name=path.stem, overrides=overrides)


def validate(cfg: ExperimentConfig) -> None:
    """Cross-field checks: registry names, required modalities, value ranges. Sections with a
    ``from_dict`` checked their own ranges while being typed; [he] against [federated] is here."""
    import veilfed.model  # noqa: F401  (fills the registries)
    from veilfed.model.init import check_freeze
    from veilfed.model.registry import ENCODERS, FUSIONS, HEADS, LOSSES
    from veilfed.schedule import check_schedule
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
    for spec in m.task_specs().values():
        missing = [r for r in HEADS.get(spec.kind).requires if r not in used]
        if missing:
            raise UsageError(
                f"model.tasks.{spec.name}: a {spec.kind} task needs the {', '.join(missing)} "
                f"encoder; set model.encoders.{missing[0]}"
            )
    fusion_requires = FUSIONS.get(m.fusion).requires
    missing = [r for r in fusion_requires if r not in used]
    if missing:
        raise UsageError(
            f"model.fusion: {m.fusion!r} needs the {', '.join(missing)} encoder; "
            f"set model.encoders.{missing[0]}"
        )
    for section, key in (
        ("train", "batch_size"),
        ("train", "epochs"),
        ("world", "clips"),
        ("world", "val_clips"),
    ):
        if getattr(getattr(cfg, section), key) < 1:
            raise UsageError(f"{section}.{key}: must be >= 1")
    if cfg.world.frames % 2 or cfg.world.size % 8:
        raise UsageError(
            f"world: frames ({cfg.world.frames}) must be even and size ({cfg.world.size}) "
            "a multiple of 8 (the video encoder's strides)"
        )
    _validate_augmentations(cfg.train.augmentations)
    check_optimizer(cfg.train)
    check_schedule(cfg.train)
    check_freeze(m.freeze)
    check_select_metric(cfg.train.select_metric, m.tasks)
    check_device(cfg.train.device, "train.device")
    check_model(cfg.train.adversarial, used, m.task_specs())
    for section, key in (
        ("world", "seed"),
        ("train", "seed"),
        ("train", "patience"),
    ):
        if getattr(getattr(cfg, section), key) < 0:
            raise UsageError(f"{section}.{key}: must be >= 0")
    _validate_privacy(cfg.privacy)
    cfg.he.check_compatible(cfg.federated, "federated")


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
