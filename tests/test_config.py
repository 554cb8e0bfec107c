"""Typed TOML config: defaults, the shipped experiments, one-line errors naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from veilfed.config import ExperimentConfig, check_delta_for, load_config, parse_config
from veilfed.errors import UsageError

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _load(tmp_path: Path, text: str) -> ExperimentConfig:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return load_config(path)


@pytest.mark.parametrize("name", ["default", "tiny"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(EXPERIMENTS / f"{name}.toml")
    assert cfg.name == name
    assert len(cfg.model.tasks) == 12
    assert cfg.world.world_config().height == cfg.world.size


def test_defaults_and_int_to_float(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "[train]\nlr = 1\n[model.tasks]\naction = 2\n")
    assert cfg.name == "exp" and cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.model.tasks == {"action": 2.0}
    assert cfg.privacy.enabled is False and cfg.model.fusion == "concat"


def test_federated_and_he_sections_pass_through(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "[federated]\nclients = 3\n[he]\nenabled = true\n")
    assert cfg.federated == {"clients": 3} and cfg.he == {"enabled": True}


@pytest.mark.parametrize(
    "text,match",
    [
        (
            "[train]\nbatch_size = 'big'\n",
            r"exp.toml: train.batch_size: expected int, got str 'big'",
        ),
        (
            "[train]\nbatch_szie = 4\n",
            r"exp.toml: train: unknown field 'batch_szie'; valid: batch_size",
        ),
        ("[privacy]\nenabled = 1\n", r"privacy.enabled: expected bool, got int"),
        ("[model]\nfusion = 'late'\n", r"model.fusion: unknown fusion 'late'; valid: concat, "),
        (
            "[model.tasks]\ntracking = 1.0\n",
            r"model.tasks.tracking: unknown head 'tracking'; valid: ",
        ),
        (
            "[model.encoders]\nvideo = ''\ntext = 'text_transformer'\n[model.tasks]\npose = 1.0\n",
            r"model.tasks.pose: needs the video encoder; set model.encoders.video",
        ),
        ("[model.encoders]\nvideo = 'text_transformer'\n", r"encodes text, not video"),
        ("[train]\naugmentations = ['nope']\n", r"train.augmentations: .*'nope'"),
        ("[model]\ntasks = 3\n", r"model.tasks: expected a table, got int"),
        ("[privacy]\nenabled = true\n", r"privacy: enabled needs noise_multiplier or epsilon"),
        ("[world]\nsize = 36\n", r"multiple of 8"),
        # nonsense DP targets, the review's train config among them
        (
            "[privacy]\nenabled = true\nepsilon = -3.0\ndelta = 5.0\n",
            r"exp.toml: privacy.epsilon: must be > 0 \(got -3\)",
        ),
        ("[privacy]\nenabled = true\nepsilon = 0.0\n", r"privacy.epsilon: must be > 0"),
        ("[privacy]\nepsilon = nan\n", r"privacy.epsilon: must be > 0 \(got nan\)"),
        ("[privacy]\nenabled = true\nepsilon = 8.0\ndelta = 5.0\n", r"delta: must be in \(0, 1\)"),
        ("[privacy]\nenabled = true\nepsilon = 8.0\ndelta = 0.0\n", r"delta: must be in \(0, 1\)"),
        ("[privacy]\nenabled = true\nepsilon = inf\n", r"privacy.epsilon: inf means no DP"),
        ("[privacy]\nnoise_multiplier = -1.0\n", r"privacy.noise_multiplier: must be > 0"),
        ("[privacy]\nnoise_multiplier = inf\n", r"privacy.noise_multiplier: must be > 0"),
        ("[privacy]\nmax_grad_norm = nan\n", r"privacy.max_grad_norm: must be > 0"),
        ("[privacy]\naccountant = 'gdp'\n", r"privacy.accountant: 'gdp'; valid: rdp, prv"),
        ("[world]\nseed = -5\n", r"world.seed: must be >= 0"),
        ("[train]\nseed = -1\n", r"train.seed: must be >= 0"),
        ("world = 3\n", r"world: expected a table"),
    ],
)
def test_errors_are_one_line_and_name_the_field(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(UsageError, match=match) as info:
        _load(tmp_path, text)
    assert "\n" not in str(info.value)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such config file"):
        load_config(tmp_path / "none.toml")
    with pytest.raises(UsageError, match="invalid TOML"):
        _load(tmp_path, "[train\n")


def test_parse_config_from_a_table() -> None:
    cfg = parse_config({"model": {"fusion": "vote"}}, "pyproject.toml", name="flwr")
    assert cfg.name == "flwr" and cfg.model.fusion == "vote"


def test_delta_must_be_below_one_over_n() -> None:
    check_delta_for(1e-3, 999)
    with pytest.raises(
        UsageError, match=r"x.toml: privacy.delta 0.01 must be < 1/n = 0.01 \(n = 100"
    ):
        check_delta_for(0.01, 100, "x.toml: privacy")
    with pytest.raises(UsageError, match="must be < 1/n"):
        check_delta_for(1e-5, 0)
