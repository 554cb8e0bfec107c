"""``[train]``'s lr schedule and gradient clipping, in the one training loop."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from testkit.config import config_error
from testkit.model import make_batch, tiny

from veilfed.config import TrainSection, load_config
from veilfed.model import create_model
from veilfed.model.check import OneBatchDataset, stack_samples
from veilfed.schedule import lr_at, schedule_for
from veilfed.train import build_optimizer, make_private, train_steps


def _lrs(train: TrainSection, total: int) -> list[float]:
    return [lr_at(train, i, total) for i in range(total)]


def test_constant_with_linear_warmup() -> None:
    train = TrainSection(lr=0.1, warmup_fraction=0.25)
    assert _lrs(train, 8) == pytest.approx([0.05, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert _lrs(TrainSection(lr=0.1), 3) == [0.1, 0.1, 0.1]


def test_cosine_runs_from_lr_to_min_lr() -> None:
    train = TrainSection(lr=0.1, schedule="cosine", min_lr=0.01)
    lrs = _lrs(train, 11)
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.01)
    assert lrs[5] == pytest.approx(0.055)  # half way: the mean of lr and min_lr
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    warm = _lrs(TrainSection(lr=0.1, schedule="cosine", warmup_fraction=0.2), 10)
    assert warm[:3] == pytest.approx([0.05, 0.1, 0.1]) and warm[-1] == pytest.approx(0.0)


@pytest.mark.parametrize("warmup", [0.0, 0.25])
def test_onecycle_is_torchs_one_cycle(warmup: float) -> None:
    """Step for step the lr torch.optim.lr_scheduler.OneCycleLR gives the same cycle."""
    total, lr, min_lr = 20, 0.1, 1e-4
    train = TrainSection(lr=lr, schedule="onecycle", min_lr=min_lr, warmup_fraction=warmup)
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=lr)
    ref = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=lr,
        total_steps=total,
        pct_start=warmup or 0.3,
        div_factor=25.0,
        final_div_factor=lr / 25.0 / min_lr,
        cycle_momentum=False,
    )
    expected = []
    for _ in range(total):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert _lrs(train, total) == pytest.approx(expected, rel=1e-9)


def _setup(n: int = 4):
    torch.manual_seed(0)
    tasks = {"action": 1.0, "detection": 1.0, "caption": 1.0, "qa": 1.0, "restoration": 1.0}
    model = create_model(tiny(tasks=tasks))  # every parameter reached: Opacus needs that
    loader = torch.utils.data.DataLoader(
        OneBatchDataset(make_batch(n)), batch_size=n, collate_fn=stack_samples
    )
    return model, loader


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


@pytest.mark.parametrize("private", [False, True], ids=["plain", "dp-sgd"])
def test_the_loop_steps_with_the_schedules_lr(private: bool) -> None:
    """Every step (the DP optimizer's too: its param groups are the wrapped optimizer's) takes
    the lr the schedule gives its place in the run; here steps 3..6 of a 10-step cosine run."""
    train = TrainSection(lr=0.05, schedule="cosine", min_lr=0.001)
    model, loader = _setup()
    opt = build_optimizer(model.parameters(), train)
    net, privacy = model, None
    if private:
        net, opt, loader, privacy = make_private(model, opt, loader, 0.0, 1.0)
    stats = train_steps(net, loader, opt, steps=4, privacy=privacy, lr=schedule_for(train, 10, 3))
    assert stats.lrs == pytest.approx([lr_at(train, i, 10) for i in range(3, 7)])
    inner = opt.original_optimizer if private else opt
    assert inner.param_groups[0]["lr"] == pytest.approx(lr_at(train, 6, 10))


def test_clip_grad_norm_bounds_the_plain_update() -> None:
    """SGD without momentum moves the weights by lr × the clipped gradient: at most lr × c."""
    lr, clip = 0.5, 1e-3
    moved = {}
    for c in (0.0, clip):
        model, loader = _setup()
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        before = _flat(model)
        train_steps(model, loader, opt, steps=1, clip_grad_norm=c)
        moved[c] = float((_flat(model) - before).norm())
    assert moved[clip] <= lr * clip * (1 + 1e-4)
    assert moved[0.0] > 10 * lr * clip  # the bound bites: unclipped it moves much further


def test_clip_grad_norm_leaves_dp_to_per_sample_clipping() -> None:
    """Under DP the update is bounded by max_grad_norm alone (no noise: lr × max_grad_norm),
    whatever clip_grad_norm says."""
    lr, max_norm = 0.5, 0.01
    moved = []
    for c in (0.0, 1e-6):
        model, loader = _setup()
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        net, opt, loader, privacy = make_private(
            model, opt, loader, 0.0, max_norm, poisson_sampling=False
        )
        before = _flat(model)
        train_steps(net, loader, opt, steps=1, privacy=privacy, clip_grad_norm=c)
        moved.append(float((_flat(model) - before).norm()))
    assert moved[0] <= lr * max_norm * (1 + 1e-4)
    assert moved[1] == pytest.approx(moved[0], rel=1e-5)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('schedule = "step"', "exp.toml: train.schedule: 'step'; valid: constant, cosine, "),
        ("warmup_fraction = 1.0", "exp.toml: train.warmup_fraction: must be in [0, 1)"),
        ("warmup_fraction = -0.1", "train.warmup_fraction: must be in [0, 1)"),
        ('schedule = "cosine"\nmin_lr = 1.0', "train.min_lr: must be in [0, lr = 0.002]"),
        ("min_lr = 0.001", "train.min_lr: only cosine and onecycle decay to it"),
        ("clip_grad_norm = -1.0", "train.clip_grad_norm: must be >= 0 and finite, 0 = off"),
        ("clip_grad_norm = inf", "train.clip_grad_norm: must be >= 0"),
        ('warmup_fraction = "10%"', "train.warmup_fraction: expected float, got str"),
    ],
)
def test_schedule_fields_are_one_line_errors(tmp_path: Path, lines: str, message: str) -> None:
    assert message in config_error(tmp_path, f"[train]\n{lines}\n")


def test_schedule_fields_load(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text(
        '[train]\nschedule = "onecycle"\nwarmup_fraction = 0.1\nmin_lr = 0\nclip_grad_norm = 5\n'
    )
    t = load_config(path).train
    assert (t.schedule, t.warmup_fraction, t.min_lr, t.clip_grad_norm) == ("onecycle", 0.1, 0, 5)
    assert math.isclose(lr_at(t, 0, 100), t.lr / 25, rel_tol=1e-6)


def test_centralized_training_follows_the_schedule(monkeypatch) -> None:
    """`veilfed train`'s loop steps through the schedule over its whole run (here 3 steps)."""
    from veilfed import centralized, epochs
    from veilfed import train as loop

    tiny_toml = Path(__file__).resolve().parents[1] / "experiments" / "tiny.toml"
    cfg = load_config(
        tiny_toml,
        {"train": {"schedule": "cosine", "min_lr": 0.0003}, "privacy": {"enabled": False}},
    )
    lrs: list[float] = []
    real = loop.train_steps

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        stats = real(*args, **kwargs)
        lrs.extend(stats.lrs)  # one call per epoch
        return stats

    monkeypatch.setattr(epochs, "train_steps", spy)
    centralized.run(cfg)
    assert lrs == pytest.approx([lr_at(cfg.train, i, 3) for i in range(3)])
    assert lrs[0] == pytest.approx(0.003) and lrs[-1] == 0.0003
