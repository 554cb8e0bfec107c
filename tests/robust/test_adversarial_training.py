"""``[train] adversarial`` (veilfed.robust.training): the config is validated field by field; the
loop trains on PGD-perturbed batches within eps; under DP-SGD (hooks and ghost) the attack leaves
nothing for the private step, per-sample clipping applies to the adversarial loss and ε is that of
the same run without the attack; centralized runs and federated client rounds both use it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from testkit.fed import make_run, write_config

from veilfed.centralized import loaders, run
from veilfed.clients.inputs import client_inputs
from veilfed.clients.trainer import train_round
from veilfed.config import load_config, parse_config
from veilfed.errors import UsageError
from veilfed.federation.digest import model_digest
from veilfed.federation.weights import initial_arrays
from veilfed.model import create_model
from veilfed.privacy.noise import INSECURE_SEED_ENV
from veilfed.robust.settings import AdversarialSettings
from veilfed.robust.training import AdversarialTraining
from veilfed.train import build_optimizer, make_private, train_steps

TINY = Path(__file__).resolve().parents[2] / "experiments" / "tiny.toml"
TASKS = {"action": 1.0, "moderation": 1.0}
ADV = AdversarialSettings(eps=0.05, steps=2, modality="all")


def _cfg(**train) -> object:
    overrides = {"model": {"tasks": TASKS}, "world": {"val_clips": 4}, "train": train}
    return load_config(TINY, overrides=overrides)


BAD = [
    ({"eps": 0}, "train.adversarial.eps: must be > 0 and finite (got 0.0)"),
    ({"eps": math.nan}, "train.adversarial.eps: must be > 0 and finite (got nan)"),
    ({"eps": math.inf}, "train.adversarial.eps: must be > 0 and finite (got inf)"),
    ({"eps": -1}, "train.adversarial.eps: must be > 0"),
    ({"eps": 0.1, "steps": 0}, "train.adversarial.steps: must be >= 1 (got 0)"),
    ({"eps": 0.1, "modality": "text"}, "train.adversarial.modality: 'text'; valid: video, audio"),
    ({"steps": 2}, "train.adversarial.eps: give the L-inf radius"),
    ({"eps": 0.1, "radius": 1}, "train.adversarial: unknown field 'radius'"),
    ({"eps": "big"}, "train.adversarial.eps: expected float"),
]


@pytest.mark.parametrize(("table", "message"), BAD, ids=[m.split(":")[0] + str(t) for t, m in BAD])
def test_each_field_is_validated_in_one_line(table, message) -> None:
    with pytest.raises(UsageError) as err:
        load_config(TINY, overrides={"train": {"adversarial": table}})
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(str(TINY))


def test_a_modality_the_model_lacks_is_refused_and_the_table_round_trips() -> None:
    video_only = {"encoders": {"video": "conv2p1d"}, "tasks": {"action": 1.0}}
    bad = {"model": video_only, "train": {"adversarial": {"eps": 0.1, "modality": "audio"}}}
    with pytest.raises(UsageError, match="train.adversarial.modality: 'audio' but the model has"):
        load_config(TINY, overrides=bad)
    regression = {"model": {"tasks": {"quality": 1.0}}, "train": {"adversarial": {"eps": 0.1}}}
    with pytest.raises(UsageError, match="train.adversarial: no task of an attackable kind"):
        load_config(TINY, overrides=regression)
    assert load_config(TINY).train.adversarial is None  # off by default
    cfg = _cfg(adversarial={"eps": 0.03, "steps": 2, "modality": "video"})
    assert cfg.train.adversarial == AdversarialSettings(0.03, 2, "video")
    assert parse_config(cfg.to_table(), "again", name=cfg.name) == cfg


def test_the_perturbed_batch_differs_from_the_clean_one_within_eps() -> None:
    cfg = _cfg()
    model = create_model(cfg).train()
    batch = next(iter(loaders(cfg)[0]))
    adv = AdversarialTraining(model, ADV)(batch)
    for m in ("video", "audio"):
        assert not torch.equal(adv[m], batch[m])
        assert (adv[m] - batch[m]).abs().max() <= ADV.eps + 1e-6
    assert torch.equal(adv["text"], batch["text"]) and adv["targets"] is batch["targets"]
    assert model.training and all(p.grad is None for p in model.parameters())


def test_the_step_trains_on_the_perturbed_batch() -> None:
    """With lr 0 the model stays put, so the loop's reported loss is that of the batch it
    stepped on: higher on the attacked batch (the attack maximises these very task losses)."""
    cfg = _cfg()
    model = create_model(cfg)
    batch = next(iter(loaders(cfg)[0]))
    losses = {}
    for name, adversarial in (("clean", None), ("attacked", AdversarialSettings(0.1, 3))):
        torch.manual_seed(0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        stats = train_steps(model, [batch], optimizer, steps=1, adversarial=adversarial)
        losses[name] = stats.loss
    assert losses["attacked"] > losses["clean"] + 0.05


def _private(cfg, mode: str, noise: float = 1.0):
    torch.manual_seed(0)
    train = loaders(cfg)[0]
    model = create_model(cfg)
    optimizer = build_optimizer(model.parameters(), cfg.train)
    return (model, *make_private(model, optimizer, train, noise, 1.0, mode=mode))


def _left_behind(model: torch.nn.Module) -> list[str]:
    """Everything an Opacus step would pick up from a stray forward or backward."""
    left = [
        f"{n}.{attr}"
        for n, p in model.named_parameters()
        for attr in ("grad", "grad_sample", "_norm_sample")
        if getattr(p, attr, None) is not None
    ]
    left += [f"{n}._forward_counter" for n, p in model.named_parameters() if p._forward_counter]
    return left + [
        f"{n}.activations" for n, m in model.named_modules() if getattr(m, "activations", None)
    ]


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_under_dp_the_attack_leaves_nothing_for_the_private_step(mode) -> None:
    cfg = _cfg()
    core, model, _, _, _ = _private(cfg, mode)
    model.train()
    batch = next(iter(loaders(cfg)[1]))
    batch.pop("clip_id")
    adv = AdversarialTraining(model, ADV)(batch)
    assert not torch.equal(adv["video"], batch["video"])
    assert _left_behind(core) == []
    assert model.hooks_enabled and core.training


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_under_dp_clipping_applies_to_the_adversarial_loss_and_epsilon_is_unchanged(
    mode, monkeypatch
) -> None:
    """Noise 0 first: each step's summed gradient is exactly the sum of the clipped per-sample
    gradients, one per sample of the batch (none from the attack), so its norm is at most
    C · rows. Then with noise: ε after the same steps is the same with and without the attack."""
    monkeypatch.setenv(INSECURE_SEED_ENV, "0")  # the same Poisson batches in every run
    cfg = _cfg()
    samples, epsilons = {}, {}
    for name, adversarial in (("plain", None), ("adversarial", ADV)):
        _, model, optimizer, loader, privacy = _private(cfg, mode, noise=0.0)
        rows: list[int] = []
        original = optimizer.add_noise

        def spy(original=original, model=model, optimizer=optimizer, rows=rows) -> None:
            if mode == "hooks":
                counts = {p.grad_sample.shape[0] for p in optimizer.params}
            else:
                counts = {model.per_sample_gradient_norms.shape[0]}
            assert len(counts) == 1
            rows.append(counts.pop())
            norm = torch.sqrt(sum(p.summed_grad.pow(2).sum() for p in optimizer.params))
            assert float(norm) <= optimizer.max_grad_norm * rows[-1] + 1e-5
            original()

        optimizer.add_noise = spy
        stats = train_steps(
            model, loader, optimizer, steps=4, privacy=privacy, adversarial=adversarial
        )
        assert len(rows) == privacy.steps == 4 and sum(rows) == stats.samples > 0
        samples[name] = stats.samples
        _, model, optimizer, loader, privacy = _private(cfg, mode, noise=1.0)
        train_steps(model, loader, optimizer, steps=4, privacy=privacy, adversarial=adversarial)
        epsilons[name] = privacy.epsilon(1e-5)
    assert samples["plain"] == samples["adversarial"]
    assert epsilons["plain"] == epsilons["adversarial"] > 0


def _count_attacks(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = AdversarialTraining.__call__

    def counted(self, batch):
        calls.append(int(batch["modality_mask"].shape[0]))
        return original(self, batch)

    monkeypatch.setattr(AdversarialTraining, "__call__", counted)
    return calls


def test_adversarial_training_runs_in_the_tiny_centralized_config(monkeypatch) -> None:
    calls = _count_attacks(monkeypatch)
    overrides = {
        "world": {"val_clips": 4},
        "model": {"dim": 16, "pixel_dim": 16},
        "train": {"threads": 1, "adversarial": {"eps": 0.03, "steps": 2}},
    }
    cfg = load_config(TINY, overrides=overrides)
    assert cfg.privacy.enabled  # the tiny config trains with DP-SGD
    summary = run(cfg)
    assert summary["steps"] == 3 and summary["clients"]["centralized"]["epsilon"] > 0
    assert len(calls) >= 1 and math.isfinite(summary["metrics"]["action"]["loss"])


def test_a_federated_client_round_trains_adversarially(tmp_path, monkeypatch) -> None:
    calls = _count_attacks(monkeypatch)
    path = write_config(tmp_path)
    line = 'adversarial = { eps = 0.05, steps = 1, modality = "video" }\n'
    path.write_text(path.read_text().replace("[train]\n", f"[train]\n{line}"))
    settings, tracker = make_run(tmp_path, path, epsilon=math.inf)
    tracker.finish()
    inputs = client_inputs(settings, {"partition-id": 0, "num-partitions": 3})
    start = initial_arrays(settings)
    result = train_round(settings, inputs, 1, start, model_digest=model_digest(start, None))
    assert result.declined is None and math.isfinite(result.loss)
    assert calls and all(n > 0 for n in calls)
