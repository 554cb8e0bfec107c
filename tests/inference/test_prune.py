"""Structured pruning of a trained model (veilfed.inference.prune): whole channels leave the
declared widths, the ones removed are the weakest, the result loads into the model its smaller
[model] section builds, fine-tuning brings it back towards the teacher, and `veilfed model
compress --method prune` logs, registers and predicts with it on a real video."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from testkit.model import output_gap, trained_tiny
from typer.testing import CliRunner

from veilfed.centralized import loaders
from veilfed.cli.main import app
from veilfed.compress import match_outputs
from veilfed.config import load_config
from veilfed.errors import UsageError
from veilfed.inference.heldout import Clips
from veilfed.inference.prune import kept, prunable, prune_model, prune_widths, pruned_section
from veilfed.model import create_model
from veilfed.model.saved import save_dir

TINY = Path(__file__).resolve().parents[2] / "experiments" / "tiny.toml"
TASKS = {"action": 1.0, "moderation": 1.0, "restoration": 1.0, "next_frame": 1.0}
WIDTHS = {"encoder_kwargs.video.width", "fusion_kwargs.hidden", "pixel_dim"}


def _config(**model):
    overrides = {"model": {"tasks": TASKS, **model}, "privacy": {"enabled": False}}
    return load_config(TINY, overrides=overrides)


@pytest.fixture(scope="module")
def setup():
    return trained_tiny(_config())


def test_keep_rounds_to_whole_groups_of_eight() -> None:
    assert [kept(n, 0.5) for n in (8, 16, 32, 64, 40)] == [8, 8, 16, 32, 16]
    assert kept(64, 0.2) == 8 and kept(64, 0.99) == 56


def test_only_dead_channels_go_and_the_function_is_unchanged() -> None:
    """Half the fusion's hidden units and half the pixel decoder's channels are made dead (all
    their weights zero); pruning to half removes exactly those, so every output is the same."""
    cfg = _config(encoder_kwargs={"video": {"width": 8}})  # 8 channels: nothing to remove
    torch.manual_seed(0)
    model = create_model(cfg).eval()
    fusion, decoder = model.fusion.mlp, model.head_sets[0].decoder.net[1]
    dead = torch.arange(0, 32, 2)
    with torch.no_grad():
        for layer in (fusion[0], decoder):
            layer.weight[dead] = 0.0
            layer.bias[dead] = 0.0
        fusion[2].weight[:, dead] = 0.0
        for head in ("restoration", "next_frame"):
            out = model.head_sets[0].heads[head].out
            out.weight[:, dead] = 0.0
    pruned, changed = prune_widths(model, cfg.world.world_config(), 0.5)
    assert changed == {"fusion_kwargs.hidden": [32, 16], "pixel_dim": [32, 16]}
    live = torch.arange(1, 32, 2)
    assert torch.equal(pruned.fusion.mlp[0].weight, fusion[0].weight[live])
    assert torch.equal(pruned.head_sets[0].decoder.net[1].bias, decoder.bias[live])
    small = create_model(pruned_section(model.config, changed))
    small.load_state_dict(pruned.state_dict())  # strict: the section expresses every shape
    batch = next(iter(loaders(cfg)[1]))
    with torch.no_grad():
        before, after = model(batch), small.eval()(batch)
    assert float(match_outputs(after, before)) < 1e-10
    assert model.fusion.mlp[0].out_features == 32  # the teacher itself is not changed


def test_pruned_model_is_smaller_and_fine_tuning_brings_it_back(setup) -> None:
    cfg, teacher, train, test, baselines = setup
    assert {".".join(p) for p in prunable(teacher)} == WIDTHS
    pruned, _ = prune_widths(teacher, cfg.world.world_config(), 0.5)
    student, student_cfg, report = prune_model(
        teacher, cfg, 0.5, Clips(train, test, baselines), epochs=6, reps=3
    )
    assert report["widths"] == {
        "encoder_kwargs.video.width": [32, 16],
        "fusion_kwargs.hidden": [32, 16],
        "pixel_dim": [32, 16],
    }
    assert student_cfg.model.pixel_dim == 16
    assert student_cfg.model.encoder_kwargs["video"]["width"] == 16
    assert report["params"]["student"] < 0.9 * report["params"]["teacher"]
    assert report["bytes"]["student"] < report["bytes"]["teacher"]
    # Held-out clips it never trained on: fine-tuning moved it towards the teacher.
    assert output_gap(student, teacher, test) < output_gap(pruned, teacher, test)
    action = report["tasks"]["action"]
    assert action["margin_after"] == pytest.approx(action["after"] - action["baseline"])


def test_a_keep_that_removes_nothing_or_is_not_a_fraction_is_refused(setup) -> None:
    cfg, teacher = setup[0], setup[1]
    world = cfg.world.world_config()
    narrow = _config(encoder_kwargs={"video": {"width": 8}}, fusion_kwargs={"hidden": 8})
    narrow = create_model(pruned_section(narrow.model, {"pixel_dim": [32, 8]}))
    with pytest.raises(UsageError, match=r"^--keep 0.5 removes no channel: the prunable"):
        prune_widths(narrow, world, 0.5)
    for keep in (0.0, 1.0, -0.5):
        with pytest.raises(UsageError, match=rf"^--keep {keep}: give the fraction"):
            prune_widths(teacher, world, keep)


def test_compress_prune_logs_registers_and_predicts(setup, videos, tmp_path: Path) -> None:
    cfg, teacher = setup[0], setup[1]
    model = save_dir(tmp_path / "teacher", teacher, cfg)
    config = tmp_path / "tiny.toml"  # the config the model was trained with: its tasks
    config.write_text(TINY.read_text().split("[model.tasks]")[0] + "[model.tasks]\n"
                      + "".join(f"{t} = 1.0\n" for t in TASKS)
                      + "[train]\nbatch_size = 8\n[privacy]\nenabled = false\n")  # fmt: skip
    runner = CliRunner()
    args = ["model", "compress", str(model), "--method", "prune", "--config", str(config),
            "--epochs", "1", "--out", str(tmp_path / "pruned")]  # fmt: skip
    res = runner.invoke(app, [*args, "--register", "pruned", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["method"] == "prune" and report["widths"]["pixel_dim"] == [32, 16]
    assert report["registry"]["name"] == "pruned"
    saved = json.loads((tmp_path / "pruned" / "model" / "model_config.json").read_text())
    assert saved["pixel_dim"] == 16 and saved["encoder_kwargs"]["video"]["width"] == 16
    res = runner.invoke(app, ["predict", "models:/pruned/1", str(videos["short"]), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.splitlines()[0])["video"]["action"]["class"]
    res = runner.invoke(app, [*args[:-1], str(tmp_path / "a"), "--keep", "1.5"])
    assert res.exit_code == 2 and "--keep 1.5: give the fraction" in res.stderr
    res = runner.invoke(app, [*args[:-1], str(tmp_path / "b"), "--student-dim", "8"])
    assert res.exit_code == 2 and "--student-dim is distill's" in res.stderr
