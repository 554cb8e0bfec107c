"""Typed TOML config: defaults, the shipped experiments, one-line errors naming file and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from veilfed.config import ExperimentConfig, load_config, parse_config
from veilfed.errors import UsageError
from veilfed.federation.sections import FederatedConfig, HEConfig
from veilfed.privacy.canary import CanarySettings
from veilfed.privacy.targets import check_delta_for

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


def test_federated_he_and_canary_sections_are_typed(tmp_path: Path) -> None:
    text = "[federated]\nclients = 6\n[he]\nenabled = true\n[canary]\nlr = 2\n"
    cfg = _load(tmp_path, text)
    assert isinstance(cfg.federated, FederatedConfig) and cfg.federated.clients == 6
    assert cfg.federated.sampled_per_round == 3 and cfg.federated.strategy == "fedavg"
    assert isinstance(cfg.he, HEConfig) and cfg.he.enabled and cfg.he.min_contributors == 3
    assert isinstance(cfg.canary, CanarySettings) and cfg.canary.lr == 2.0
    assert _load(tmp_path, "").federated == FederatedConfig()


def test_overrides_apply_before_validation(tmp_path: Path) -> None:
    """Flags override the file's fields; the config is validated with their values."""
    path = tmp_path / "exp.toml"
    path.write_text("[federated]\nclients = 2\nmin_fit_clients = 2\nfraction = 1.0\n")
    assert load_config(path).federated.min_fit_clients == 2
    cfg = load_config(path, {"federated": {"clients": 8, "rounds": 5}})
    assert (cfg.federated.clients, cfg.federated.rounds, cfg.federated.min_fit_clients) == (8, 5, 2)
    with pytest.raises(
        UsageError, match=r"exp.toml: federated.min_fit_clients must be in \[1, 1\]"
    ):
        load_config(path, {"federated": {"fraction": 0.5}})
    with pytest.raises(UsageError, match="exp.toml: federated: 2 clients sampled per round"):
        load_config(path, {"he": {"enabled": True}})


def test_table_round_trips(tmp_path: Path) -> None:
    """``to_table`` is what a run sends its clients; parsing it gives the same config."""
    text = "[federated]\nclients = 6\nstrategy = 'fedprox'\n[he]\nenabled = true\n"
    cfg = _load(tmp_path, text + "[privacy]\nenabled = true\nepsilon = 4\n[canary]\nseed = 3\n")
    table = json.loads(json.dumps(cfg.to_table()))
    assert parse_config(table, "run settings") == cfg
    assert "secret_path" not in table["he"]


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
            r"model.tasks.tracking: give kind \(classification, .*\) and classes; 'tracking' is "
            r"not a task of the synthetic preset",
        ),
        (
            "[model.tasks.scene]\nkind = 'classification'\nclasses = ['a']\n",
            r"model.tasks.scene.classes: a classification task needs at least 2 classes",
        ),
        (
            "[model.tasks.scene]\nkind = 'tracking'\n",
            r"model.tasks.scene.kind: unknown kind 'tracking'; valid: classification, ",
        ),
        (
            "[model.tasks.scene]\nkind = 'classification'\nclasses = ['a', 'a']\n",
            r"model.tasks.scene.classes: 'a' is listed twice",
        ),
        (
            "[model.tasks.mos]\nkind = 'regression'\nrange = [5, 1]\n",
            r"model.tasks.mos.range: expected \[low, high\] with low < high",
        ),
        (
            "[model.tasks.mos]\nkind = 'regression'\nslots = 3\n",
            r"model.tasks.mos: unknown field 'slots' for a regression task; valid: kind, ",
        ),
        (
            "[model.encoders]\nvideo = ''\ntext = 'text_transformer'\n[model.tasks]\npose = 1.0\n",
            r"model.tasks.pose: a keypoints task needs the video encoder; set model.encoders.video",
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
        ("[federated]\nclients = 0\n", r"exp.toml: federated.clients must be >= 1 \(got 0\)"),
        ("[federated]\nfraction = '1'\n", r"federated.fraction: expected float, got str '1'"),
        ("[federated]\nclient = 3\n", r"federated: unknown field 'client'; valid: clients, "),
        ("[federated]\ncentral_dp = 'on'\n", r"federated.central_dp 'on': use one of off, "),
        ("[he]\nenabled = 1\n", r"exp.toml: he.enabled: expected bool, got int"),
        ("[he]\nsecret_path = 'k'\n", r"exp.toml: he: unknown field 'secret_path'"),
        (
            "[he]\nenabled = true\n[federated]\nclients = 8\nstrategy = 'median'\n",
            r"exp.toml: federated: strategy 'median' needs plaintext updates .* turn HE off",
        ),
        ("[canary]\nguesses = 3\n", r"exp.toml: canary.guesses: must be even"),
        ("[canary]\nm = 3\n", r"exp.toml: canary: unknown field 'm'"),
        ("bogus = 3\n", r"exp.toml: unknown field 'bogus'; valid: name, world, "),
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
