"""The shared training loop and the Opacus wrapper (hooks and ghost clipping)."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.accountants import RDPAccountant
from testkit.model import make_batch, tiny

from veilfed.errors import UsageError
from veilfed.model import create_model
from veilfed.model.check import OneBatchDataset, stack_samples
from veilfed.train import CachedDataset, make_private, train_steps


def _setup(fusion: str = "concat", n: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    tasks = {"action": 1.0, "detection": 1.0, "caption": 1.0, "qa": 1.0, "restoration": 1.0}
    model = create_model(tiny(tasks=tasks, fusion=fusion, loss_weighting="uncertainty"))
    loader = torch.utils.data.DataLoader(
        OneBatchDataset(make_batch(n)), batch_size=n, collate_fn=stack_samples
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt, loader


def test_plain_training_lowers_the_loss() -> None:
    model, opt, loader = _setup()
    first = train_steps(model, loader, opt, steps=1)
    later = train_steps(model, loader, opt, steps=15)
    assert later.steps == 15 and later.samples == 60
    assert later.loss < first.loss
    assert set(later.task_losses) == {"action", "detection", "caption", "qa", "restoration"}


@pytest.mark.parametrize("fusion", ["concat", "vote", "cross_attention", "transformer"])
def test_hooks_and_ghost_clip_identically(fusion: str) -> None:
    """Without noise both modes must apply the same clipped, averaged gradient."""
    params = {}
    for mode in ("hooks", "ghost"):
        model, opt, loader = _setup(fusion=fusion)
        private, opt, loader, privacy = make_private(
            model,
            opt,
            loader,
            noise_multiplier=0.0,
            max_grad_norm=0.05,
            mode=mode,
            poisson_sampling=False,
        )
        stats = train_steps(private, loader, opt, steps=1, privacy=privacy)
        assert stats.steps == 1 and privacy.mode == mode
        params[mode] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.allclose(params["hooks"], params["ghost"], atol=1e-5)


def test_clipping_bounds_the_update() -> None:
    model, opt, loader = _setup()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    private, opt, loader, privacy = make_private(
        model, opt, loader, 0.0, 0.01, poisson_sampling=False
    )
    train_steps(private, loader, opt, steps=1, privacy=privacy)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm() <= 0.1 * 0.01 + 1e-6  # lr x max_grad_norm


def test_persisted_accountant_accumulates_across_rounds() -> None:
    accountant = RDPAccountant()
    eps = []
    for _ in range(2):
        model, opt, loader = _setup()
        private, opt, loader, privacy = make_private(
            model, opt, loader, 1.0, 1.0, accountant=accountant
        )
        train_steps(private, loader, opt, steps=2, privacy=privacy)
        eps.append(privacy.epsilon(1e-5))
    assert privacy.accountant is accountant
    assert privacy.steps == 4
    assert eps[1] > eps[0] > 0


def test_bad_mode_and_step_arguments() -> None:
    model, opt, loader = _setup()
    with pytest.raises(UsageError, match="valid: auto, hooks, ghost"):
        make_private(model, opt, loader, 1.0, 1.0, mode="fast")
    with pytest.raises(UsageError, match="exactly one of steps or epochs"):
        train_steps(model, loader, opt)


def _empty(batch: dict) -> dict:
    def cut(x: object) -> object:
        if isinstance(x, dict):
            return {k: cut(v) for k, v in x.items()}
        return x[:0]

    return cut(batch)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_empty_poisson_batch_is_a_noise_only_step(mode: str) -> None:
    model, opt, loader = _setup()
    private, opt, _, privacy = make_private(
        model, opt, loader, 1.0, 1.0, mode=mode, poisson_sampling=False
    )
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    stats = train_steps(private, [_empty(make_batch(4))], opt, steps=1, privacy=privacy)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert stats.steps == 1 and stats.samples == 0
    assert privacy.steps == 1  # the accountant counted it
    assert not torch.equal(before, after)  # noise was added


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_a_run_of_only_empty_poisson_batches_has_no_loss(mode: str) -> None:
    """Every Poisson batch of the run is empty: two noise-only steps, finite noised weights, and
    no loss to report (NaN, not a mean of 0 over no batch)."""
    model, opt, loader = _setup()
    opt = torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=5.0)
    private, opt, _, privacy = make_private(
        model, opt, loader, 1.0, 1.0, mode=mode, poisson_sampling=False
    )
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    empty = _empty(make_batch(4))
    stats = train_steps(private, [empty, empty], opt, epochs=1, privacy=privacy)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert stats.steps == 2 and stats.batches == 0 and privacy.steps == 2
    assert math.isnan(stats.loss) and stats.task_losses == {}
    assert torch.isfinite(after).all() and not torch.equal(before, after)


def test_cached_dataset_builds_once_and_augments_per_use() -> None:
    calls = []

    class Source(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> dict:
            calls.append(i)
            return {"x": torch.tensor(float(i))}

    ds = CachedDataset(Source(), augment=lambda s: {"x": s["x"] + 10})
    assert [float(ds[i]["x"]) for i in (0, 1, 0)] == [10.0, 11.0, 10.0]
    assert calls == [0, 1] and len(ds) == 2


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
@pytest.mark.parametrize("insecure", [False, True], ids=["os-entropy", "insecure-control"])
def test_noise_is_not_a_function_of_the_torch_seed(mode: str, insecure: bool, monkeypatch) -> None:
    """Replay attack on ``make_private``: the same torch seed, model and batch give the same
    noise only under the test-only insecure switch; the Poisson sampler has its own generator."""
    from veilfed.privacy.noise import INSECURE_SEED_ENV

    monkeypatch.delenv(INSECURE_SEED_ENV, raising=False)
    if insecure:
        monkeypatch.setenv(INSECURE_SEED_ENV, "3")
    updates = []
    for _ in range(2):
        model, opt, loader = _setup(seed=11)
        private, opt, loader, privacy = make_private(model, opt, loader, 1.0, 1.0, mode=mode)
        assert opt.secure_mode and opt.generator is not torch.default_generator
        assert loader.batch_sampler.generator not in (None, opt.generator)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        train_steps(private, [_empty(make_batch(4))], opt, steps=1, privacy=privacy)
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        updates.append(after - before)
    assert torch.equal(updates[0], updates[1]) is insecure


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_every_poisson_batch_of_the_real_data_path_may_be_empty(mode: str, tiny_world) -> None:
    """Poisson sampling draws empty batches at random (its generator is not seeded): Opacus
    must be able to build one, first or later, from real clips collated as training does."""
    from veilfed.data.dataset import ClipDataset, MemorySource
    from veilfed.train import train_collate

    dataset = ClipDataset(MemorySource.world(tiny_world, 4), tiny_world)
    model = create_model(tiny(tasks={"action": 1.0, "moderation": 1.0}))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=train_collate)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    private, opt, loader, privacy = make_private(model, opt, loader, 1.0, 1.0, mode=mode)
    first = loader.collate_fn([])  # the very first batch is empty
    assert first["video"].shape[0] == 0 and "clip_id" not in first
    full = loader.collate_fn([dataset[0], dataset[1]])
    assert full["video"].shape[0] == 2
    later = loader.collate_fn([])
    assert set(later) == set(full) and later["video"].shape[0] == 0
    stats = train_steps(private, [later], opt, steps=1, privacy=privacy)
    assert stats.steps == 1 and stats.samples == 0 and privacy.steps == 1


def test_the_optimizer_is_the_one_train_names() -> None:
    from veilfed.config import TrainSection
    from veilfed.train import build_optimizer

    model = torch.nn.Linear(3, 2)
    adamw = build_optimizer(
        model.parameters(), TrainSection(optimizer="adamw", lr=0.01, weight_decay=0.1)
    )
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.param_groups[0]["lr"] == 0.01 and adamw.param_groups[0]["weight_decay"] == 0.1
    sgd = build_optimizer(model.parameters(), TrainSection(momentum=0.9, weight_decay=0.5))
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["momentum"] == 0.9 and sgd.param_groups[0]["weight_decay"] == 0.5
    adam = build_optimizer(model.parameters(), TrainSection(optimizer="adam"))
    assert isinstance(adam, torch.optim.Adam)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"optimizer": "rmsprop"}, "train.optimizer: 'rmsprop'; valid: adam, adamw, sgd"),
        ({"optimizer": "adam", "momentum": 0.9}, "train.momentum: only optimizer = 'sgd'"),
        ({"momentum": 1.0}, "train.momentum: must be in [0, 1)"),
        ({"weight_decay": -1.0}, "train.weight_decay: must be >= 0"),
        ({"lr": 0.0}, "train.lr: must be > 0"),
    ],
)
def test_bad_optimizer_fields_are_one_line_errors(tmp_path, fields, message) -> None:
    from veilfed.config import load_config

    lines = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in fields.items())
    path = tmp_path / "exp.toml"
    path.write_text(f"[train]\n{lines}")
    with pytest.raises(UsageError) as err:
        load_config(path)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("private", [False, True], ids=["plain", "dp-sgd"])
def test_dwa_weights_follow_the_epoch_losses(private: bool) -> None:
    """``end_epoch`` runs once per epoch: DWA is uniform for two epochs, then reweights."""
    torch.manual_seed(0)
    tasks = {"action": 1.0, "detection": 1.0, "caption": 1.0, "qa": 1.0, "restoration": 1.0}
    model = create_model(tiny(tasks=tasks, loss_weighting="dwa"))
    loader = torch.utils.data.DataLoader(
        OneBatchDataset(make_batch(4)), batch_size=4, collate_fn=stack_samples
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    net, privacy = model, None
    if private:
        net, opt, loader, privacy = make_private(model, opt, loader, 0.5, 1.0)
    train_steps(net, loader, opt, epochs=1, privacy=privacy)
    assert model.weighting.current_weights() == dict.fromkeys(tasks, 1.0)
    train_steps(net, loader, opt, epochs=2, privacy=privacy)
    assert int(model.weighting.epochs) == 3
    weights = model.weighting.current_weights()
    assert weights["action"] != pytest.approx(1.0) and sum(weights.values()) == pytest.approx(5.0)


def test_after_step_runs_after_every_step_on_data_only() -> None:
    """The hook (FedProx's pull) follows each optimizer step on a batch, never a noise-only step
    (the pull uses no data; an empty Poisson batch has nothing to pull after)."""
    model, opt, loader = _setup()
    private, opt, _, privacy = make_private(model, opt, loader, 1.0, 1.0, poisson_sampling=False)
    calls: list[int] = []
    batches = [make_batch(4), _empty(make_batch(4)), make_batch(4)]
    stats = train_steps(
        private, batches, opt, epochs=1, privacy=privacy, after_step=lambda: calls.append(1)
    )
    assert stats.steps == 3 and stats.batches == 2 and len(calls) == 2
