"""Starting from given weights (``--init-from``) and ``[model] freeze`` under Opacus."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from testkit.config import config_error
from testkit.model import make_batch, tiny

from veilfed.config import TrainSection
from veilfed.errors import UsageError
from veilfed.model import create_model
from veilfed.model.check import OneBatchDataset, stack_samples
from veilfed.model.init import TOP_LEVEL, freeze, init_from, read_weights
from veilfed.train import build_optimizer, make_private, train_steps

TASKS = {"action": 1.0, "detection": 1.0, "caption": 1.0, "qa": 1.0, "restoration": 1.0}


def test_top_level_modules_are_the_models() -> None:
    model = create_model(tiny(tasks={"action": 1.0}))
    assert tuple(n for n, _ in model.named_children()) == TOP_LEVEL


def test_init_from_a_veilfed_state_dict_reproduces_outputs(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = create_model(tiny(tasks=TASKS)).eval()
    path = tmp_path / "model.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    target = create_model(tiny(tasks=TASKS)).eval()
    batch = make_batch(2)
    with torch.no_grad():
        assert not torch.equal(target(batch)["action"], source(batch)["action"])
        state, dropped = read_weights(path)
        report = init_from(target, state, str(path), dropped)
        out, ref = target(batch), source(batch)
    assert report.missing == [] and report.unexpected == [] and report.mismatched == {}
    assert len(report.loaded) == len(source.state_dict())
    for task in ("action", "qa", "restoration"):
        got, want = out[task], ref[task]  # a tensor, or a dict of tensors (pixel heads)
        pairs = [(got[k], want[k]) for k in want] if isinstance(want, dict) else [(got, want)]
        assert all(torch.equal(a, b) for a, b in pairs)


def test_torchvision_r2plus1d_18_weights_map_onto_the_video_encoder(tmp_path: Path) -> None:
    """Random torchvision r2plus1d_18 weights (BatchNorm affines randomised too) land on
    veilfed's r2plus1d_18 encoder tensor for tensor; BN running stats and fc are dropped."""
    from torchvision.models.video import r2plus1d_18

    torch.manual_seed(0)
    tv = r2plus1d_18(weights=None)
    with torch.no_grad():
        for module in tv.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_()
                module.running_mean.normal_()
    path = tmp_path / "r2plus1d_18.pth"
    torch.save(tv.state_dict(), path)
    model = create_model(tiny(tasks={"action": 1.0}, encoders={"video": "r2plus1d_18"}))
    state, dropped = read_weights(path)
    report = init_from(model, state, str(path), dropped)
    own = model.state_dict()
    src = tv.state_dict()
    pairs = {
        "stem.0.weight": "encoders.video.body.0.0.weight",
        "stem.1.weight": "encoders.video.body.0.1.weight",  # BN gamma -> GN weight
        "stem.1.bias": "encoders.video.body.0.1.bias",
        "layer1.0.conv1.0.0.weight": "encoders.video.body.1.0.conv1.0.0.weight",
        "layer3.0.downsample.1.weight": "encoders.video.body.3.0.downsample.1.weight",
        "layer4.1.conv2.1.bias": "encoders.video.body.4.1.conv2.1.bias",
    }
    for theirs, ours in pairs.items():
        assert torch.equal(own[ours], src[theirs])
    convs_and_affines = [k for k in src if not k.startswith("fc.") and "running" not in k]
    convs_and_affines = [k for k in convs_and_affines if "num_batches" not in k]
    assert len(report.loaded) == len(convs_and_affines)
    assert all(k.startswith("encoders.video.body.") for k in report.loaded)
    assert "fc.weight" in report.dropped and "stem.1.running_var" in report.dropped
    assert report.unexpected == [] and report.mismatched == {}


def test_init_from_refuses_what_does_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"something.weight": torch.zeros(3)}, path)
    model = create_model(tiny(tasks={"action": 1.0}))
    with pytest.raises(UsageError, match="no tensor matches the model in name and shape"):
        init_from(model, *read_weights(path)[:1], source=str(path))
    with pytest.raises(UsageError, match="models:/veilfed/3"):
        read_weights("models:/veilfed/3")
    with pytest.raises(UsageError, match="no such weights file"):
        read_weights(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a tensor file")
    with pytest.raises(UsageError, match="not a torch state dict"):
        read_weights(junk)


def _frozen_setup(mode: str):
    torch.manual_seed(0)
    model = create_model(tiny(tasks=TASKS))
    frozen = freeze(model, ["encoders.video", "fusion"])
    loader = torch.utils.data.DataLoader(
        OneBatchDataset(make_batch(4)), batch_size=4, collate_fn=stack_samples
    )
    opt = build_optimizer(model.parameters(), TrainSection(lr=0.1))
    private, opt, loader, privacy = make_private(
        model, opt, loader, 1.0, 1.0, mode=mode, poisson_sampling=False
    )
    return model, frozen, private, opt, loader, privacy


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_frozen_modules_get_no_per_sample_gradient_and_stay_bit_identical(mode: str) -> None:
    model, frozen, private, opt, loader, privacy = _frozen_setup(mode)
    params = dict(model.named_parameters())
    assert frozen and all(n.startswith(("encoders.video.", "fusion.")) for n in frozen)
    assert {id(p) for p in opt.params} == {id(p) for n, p in params.items() if n not in frozen}
    before = {n: params[n].detach().clone() for n in frozen}
    batch = next(iter(loader))
    opt.zero_grad(set_to_none=True)
    outputs = private(batch)
    loss = privacy.criterion(outputs, batch)
    loss.backward()
    per_sample = "grad_sample" if mode == "hooks" else "_norm_sample"
    for name in frozen:
        assert getattr(params[name], per_sample, None) is None, name
        assert params[name].grad is None, name
    trainable = [p for n, p in params.items() if n not in frozen]
    assert all(getattr(p, per_sample, None) is not None for p in trainable)
    opt.step()
    train_steps(private, loader, opt, steps=2, privacy=privacy)  # and two more DP steps
    assert all(torch.equal(params[n], before[n]) for n in frozen)
    assert privacy.steps == 3


@pytest.mark.parametrize(
    ("freeze_line", "message"),
    [
        ('["encoder.video"]', "exp.toml: model.freeze[0]: 'encoder.video' is not a module of "),
        ('["heads"]', "valid top-level modules: encoders, fusion, head_sets, weighting"),
    ],
)
def test_freeze_prefixes_are_checked(tmp_path: Path, freeze_line: str, message: str) -> None:
    assert message in config_error(tmp_path, f"[model]\nfreeze = {freeze_line}\n")


def test_freeze_checks_full_names_against_the_model() -> None:
    model = create_model(tiny(tasks={"action": 1.0}))
    with pytest.raises(UsageError, match=r"'encoders.vid' names no module .* encoders.video"):
        freeze(model, ["encoders.vid"])
    freeze(model, list(TOP_LEVEL))
    with pytest.raises(UsageError, match="every parameter is frozen; shorten model.freeze"):
        build_optimizer(model.parameters(), TrainSection())
