"""The L∞ attack (veilfed.robust) against a known result: on a model linear in its inputs, FGSM
and PGD at eps move every sample's logit margin by exactly eps · ‖w‖₁, so robust accuracy is what
the analytic margins predict; the perturbation stays in its ball and range; eps = 0 changes
nothing; and on the real tiny model the attack is seeded, touches no parameter gradient and
lowers a trained model's held-out score."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from testkit.model import trained_tiny
from torch import nn

from veilfed.centralized import loaders
from veilfed.config import load_config
from veilfed.errors import UsageError
from veilfed.model import create_model
from veilfed.robust import Attack, Attacked, perturb, robustness_report
from veilfed.tasks import task_spec

TINY = Path(__file__).resolve().parents[2] / "experiments" / "tiny.toml"
B, T, H, W, S = 64, 1, 2, 2, 6


class LinearModel(nn.Module):
    """``label`` (2 classes) and ``flag`` (binary) logits linear in the pixels and samples; the
    interface the attack uses: ``model(batch)``, ``model.loss``, ``task_specs``."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        d = T * 3 * H * W
        self.video = nn.Parameter(torch.randn(d, 3, generator=g))  # 2 class logits + the flag
        self.audio = nn.Parameter(torch.randn(S, 3, generator=g))
        # Centred on the clips' mean pixel (0.5), so the margins spread around 0.
        centre = -0.5 * self.video.detach().sum(0)
        self.bias = nn.Parameter(centre + torch.tensor([0.2, 0.0, 0.1]))
        self.task_specs = {
            "label": task_spec("label", {"kind": "classification", "classes": ["a", "b"]}),
            "flag": task_spec("flag", {"kind": "binary"}),
        }

    def forward(self, batch: dict) -> dict:
        z = batch["video"].flatten(1) @ self.video + batch["audio"] @ self.audio + self.bias
        return {"label": z[:, :2], "flag": z[:, 2]}

    def loss(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        y = batch["targets"]
        per_task = {
            "label": F.cross_entropy(outputs["label"], y["label"]),
            "flag": F.binary_cross_entropy_with_logits(outputs["flag"], y["flag"]),
        }
        return sum(per_task.values()), per_task

    def margins(self, batch: dict) -> dict[str, torch.Tensor]:
        """Each sample's signed margin: > 0 exactly when the decision is right."""
        with torch.no_grad():
            out = self(batch)
        y = batch["targets"]
        label = (
            out["label"].gather(1, y["label"][:, None])[:, 0]
            - out["label"].gather(1, 1 - y["label"][:, None])[:, 0]
        )
        return {"label": label, "flag": (2 * y["flag"] - 1) * out["flag"]}

    def l1(self, task: str, batch: dict, modalities: tuple[str, ...]) -> torch.Tensor:
        """Per sample, ‖∂margin/∂input‖₁ over the attacked inputs: what eps multiplies."""
        total = torch.zeros(B)
        for m in modalities:
            w = getattr(self, m).detach()
            if task == "label":
                y = batch["targets"]["label"]
                dw = (w[:, 0] - w[:, 1])[None, :] * (1 - 2 * y[:, None]).float()
            else:
                dw = w[:, 2][None, :].expand(B, -1)
            total = total + dw.abs().sum(1)
        return total


def linear_batch(lo: float = 0.3, hi: float = 0.7, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "clip_id": [f"c{i}" for i in range(B)],
        "video": lo + (hi - lo) * torch.rand(B, T, 3, H, W, generator=g),
        "audio": (2 * lo - 1) + 2 * (hi - lo) * torch.rand(B, S, generator=g),
        "modality_mask": torch.ones(B, 3, dtype=torch.bool),
        "targets": {
            "label": torch.randint(0, 2, (B,), generator=g),
            "flag": torch.randint(0, 2, (B,), generator=g).float(),
        },
        "target_mask": {},
    }


@pytest.mark.parametrize("task", ["label", "flag"])
@pytest.mark.parametrize("modalities", [("video",), ("audio",), ("video", "audio")])
@pytest.mark.parametrize(
    "attack_of", [lambda e: Attack(e, "fgsm"), lambda e: Attack(e, "pgd", 7)], ids=["fgsm", "pgd"]
)
def test_the_margin_moves_by_eps_times_the_l1_norm(task, modalities, attack_of) -> None:
    model, batch = LinearModel(), linear_batch()
    clean = model.margins(batch)[task]
    for eps in (0.05, 0.2):  # inputs in [0.3, 0.7] (audio [-0.4, 0.4]): nothing is clamped
        attack = Attack(**(attack_of(eps).__dict__ | {"modalities": modalities}))
        adv = perturb(model, batch, attack, [task], torch.Generator().manual_seed(0))
        expected = clean - eps * model.l1(task, batch, modalities)
        assert torch.allclose(model.margins(adv)[task], expected, atol=1e-4)
        robust_accuracy = float((model.margins(adv)[task] > 0).float().mean())
        assert robust_accuracy == float((expected > 0).float().mean())
        assert robust_accuracy < float((clean > 0).float().mean())


def test_the_perturbation_stays_in_its_ball_and_range() -> None:
    model, batch = LinearModel(), linear_batch(lo=0.0, hi=1.0)  # inputs up to the range's edges
    for attack in (Attack(0.3, "pgd", 5, ("video", "audio")), Attack(0.3, "fgsm", 1, ("video",))):
        adv = perturb(model, batch, attack, ["label", "flag"], torch.Generator().manual_seed(3))
        for m in attack.modalities:
            assert (adv[m] - batch[m]).abs().max() <= 0.3 + 1e-6
            lo, hi = (0.0, 1.0) if m == "video" else (-1.0, 1.0)
            assert adv[m].min() >= lo and adv[m].max() <= hi
        assert (adv["video"] == 0).any() and (adv["video"] == 1).any()  # it did reach the edges
        if attack.modalities == ("video",):
            assert adv["audio"] is batch["audio"]


def test_eps_zero_leaves_the_inputs_unchanged() -> None:
    model, batch = LinearModel(), linear_batch()
    for method in ("fgsm", "pgd"):
        adv = perturb(model, batch, Attack(0.0, method, 3, ("video", "audio")), ["label"])
        assert torch.equal(adv["video"], batch["video"]) and torch.equal(
            adv["audio"], batch["audio"]
        )


def test_an_absent_modality_is_not_perturbed() -> None:
    model, batch = LinearModel(), linear_batch()
    batch["modality_mask"][:5, 1] = False  # no audio in the first five clips
    adv = perturb(model, batch, Attack(0.1, "pgd", 3, ("audio",)), ["label"])
    assert torch.equal(adv["audio"][:5], batch["audio"][:5])
    assert not torch.equal(adv["audio"][5:], batch["audio"][5:])


def test_the_attacked_loader_keeps_the_labels_and_gives_the_analytic_accuracy() -> None:
    model, batch = LinearModel(), linear_batch()
    attack = Attack(0.1, "pgd", 5)
    (adv,) = list(Attacked(model, [batch], attack, ["label"], seed=0))
    assert adv["targets"] is batch["targets"] and adv["clip_id"] == batch["clip_id"]
    expected = model.margins(batch)["label"] - 0.1 * model.l1("label", batch, ("video",))
    assert torch.allclose(model.margins(adv)["label"], expected, atol=1e-4)


def test_bad_attacks_are_refused() -> None:
    for kwargs, match in (
        ({"eps": float("nan")}, "eps"),
        ({"eps": -0.1}, "eps"),
        ({"eps": 0.1, "method": "cw"}, "unknown attack"),
        ({"eps": 0.1, "steps": 0}, "steps"),
        ({"eps": 0.1, "modalities": ("text",)}, "modalities"),
    ):
        with pytest.raises(UsageError, match=match):
            Attack(**kwargs)


@pytest.fixture(scope="module")
def trained():
    overrides = {
        "world": {"clips": 48, "eval_clips": 24},
        "model": {"tasks": {"action": 1.0, "moderation": 1.0}},
        "train": {"batch_size": 8},
        "privacy": {"enabled": False},
    }
    return trained_tiny(load_config(TINY, overrides=overrides), epochs=4)


def test_on_the_real_model_the_attack_is_seeded_and_touches_no_parameter(trained) -> None:
    _, model, _, test, _ = trained
    batch = next(iter(test))
    model.zero_grad(set_to_none=True)  # training's last step left its gradients
    model.train()
    attack = Attack(0.03, "pgd", 3, ("video", "audio"))
    first, again, other = (
        perturb(model, batch, attack, ["moderation"], torch.Generator().manual_seed(s))
        for s in (0, 0, 1)
    )
    assert model.training  # its mode is restored
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(first["video"], again["video"]) and torch.equal(
        first["audio"], again["audio"]
    )
    assert not torch.equal(first["video"], other["video"])
    assert (first["video"] - batch["video"]).abs().max() <= 0.03 + 1e-6
    assert not torch.equal(first["video"], batch["video"])
    model.eval()


def test_the_attack_lowers_a_trained_models_held_out_score(trained) -> None:
    _, model, _, test, baselines = trained
    for attack in (Attack(0.05, "fgsm"), Attack(0.05, "pgd", 5)):
        report = robustness_report(model, test, baselines, ["moderation"], attack, bootstrap=50)
        row = report["tasks"]["moderation"]
        assert row["metric"] == "f1" and report["clips"] == 24
        assert row["clean"] > row["baseline"]  # it learned something to attack
        assert row["robust"] < row["clean"] - 0.1
        assert row["margin_robust"] == pytest.approx(row["robust"] - row["baseline"])
        assert row["drop"] == pytest.approx(row["clean"] - row["robust"])
    clean = robustness_report(model, test, baselines, ["moderation"], None, bootstrap=0)
    assert "robust" not in clean["tasks"]["moderation"] and clean["attack"] is None


def test_an_untrained_real_model_is_attacked_on_every_attackable_kind() -> None:
    cfg = load_config(TINY, overrides={"privacy": {"enabled": False}})
    model = create_model(cfg).eval()
    batch = next(iter(loaders(cfg)[1]))
    adv = perturb(
        model, batch, Attack(0.02, "fgsm", 1, ("video", "audio")), ["action", "moderation"]
    )
    assert (adv["audio"] - batch["audio"]).abs().max() == pytest.approx(0.02, abs=1e-6)
