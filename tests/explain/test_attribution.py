"""Attributions through captum on a model whose answer is known: an oracle that reads only the
red channel inside the forbidden symbol's square (and only when video is present) puts all of
its attribution there, whatever the method; modality ablation names video; a token the oracle
reads is the one occlusion finds; attention maps come from attention fusions only."""

from __future__ import annotations

import pytest
import torch
from testkit.model import make_batch
from torch import nn

from veilfed.config import parse_config
from veilfed.data.text import PAD
from veilfed.errors import UsageError
from veilfed.explain import Target, ablate, attribute, pick
from veilfed.explain.attention import attention_map
from veilfed.explain.localise import share, symbol_region
from veilfed.model import create_model
from veilfed.model.encoders.audio import LogMel

T, H, W = 4, 32, 32
READ_TOKEN = 2  # the position the oracle reads


class _Text(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(400, 4)


class _Audio(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frontend = LogMel()


class Oracle(nn.Module):
    """moderation logit = red inside ``region`` (when video is present) + one token's embedding;
    audio passes through the spectrogram with weight 0."""

    modalities = ("video", "audio", "text")

    def __init__(self, region: torch.Tensor, specs: dict) -> None:
        super().__init__()
        self.region = region
        self.task_specs = specs
        self.encoders = nn.ModuleDict({"audio": _Audio(), "text": _Text()})

    def forward(self, batch: dict) -> dict:
        video = batch["video"][:, :, 0] * self.region  # red channel [B, T, H, W]
        present = batch["modality_mask"].float()
        logit = video.sum(dim=(1, 2, 3)) * present[:, 0] - 2.0
        spec = self.encoders["audio"].frontend(batch["audio"]).mean(dim=(1, 2))
        tokens = self.encoders["text"].embed(batch["text"])[:, READ_TOKEN].sum(dim=-1)
        return {"moderation": logit + 0.0 * spec + tokens * present[:, 2]}


@pytest.fixture(scope="module")
def oracle():
    labels = {"forbidden": {"symbol_frame": 1}}
    region = symbol_region(labels, T, H, W)
    cfg = parse_config({"model": {"tasks": {"moderation": 1.0}}}, "explain")
    batch = make_batch(1, T, H, W, seed=3)
    batch["text"][0, :6] = torch.tensor([5, 6, 7, 8, 9, 10])
    batch["text"][0, 6:] = PAD
    return Oracle(region, cfg.model.task_specs()), batch, region


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion"])
def test_all_video_attribution_falls_inside_the_region_the_oracle_reads(oracle, method) -> None:
    model, batch, region = oracle
    target = Target("moderation", "binary", 0, "flagged")
    attr = attribute(model, batch, target, method, steps=16, patch=4)
    assert attr.video.shape == (T, H, W)
    if method == "occlusion":  # a patch's drop covers the whole patch: the patches it touches
        region = torch.nn.functional.max_pool2d(region[:, None].float(), 4)[:, 0] > 0
        region = region.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)
    assert share(attr.video, region) > 0.97  # what a random map puts there: the region's area
    assert float(region.float().mean()) < 0.05
    assert attr.frame_shares()[0] < 1e-6  # the symbol is not shown on frame 0
    text = attr.text / attr.text.sum()
    assert int(text.argmax()) == READ_TOKEN and float(text[READ_TOKEN]) > 0.97
    assert float(text[6:].sum()) == 0.0  # PAD positions carry nothing
    assert attr.audio is not None and float(attr.audio.sum()) < 1e-6  # weight 0: no attribution
    assert all(v == 0.0 for v in attr.to_json()["audio"]["time_share"])  # zeros, never NaN


def test_modality_ablation_names_the_modality_the_oracle_reads(oracle) -> None:
    model, batch, _ = oracle
    result = ablate(model, batch, Target("moderation", "binary", 0, "flagged"))
    assert result["decided"] == "video"
    assert result["drop"]["video"] > 0 and result["drop"]["audio"] == pytest.approx(0, abs=1e-6)
    assert set(result["without"]) == {"video", "audio", "text"}


def test_targets_are_checked_against_the_model(oracle) -> None:
    model, batch, _ = oracle
    outputs = model(batch)
    assert pick(model, "moderation", None, outputs).label == "flagged"
    with pytest.raises(UsageError, match=r"^--task 'action': the model has no such task"):
        pick(model, "action", None, outputs)
    with pytest.raises(UsageError, match=r"^--class 'x': 'moderation' has the classes flagged"):
        pick(model, "moderation", "x", outputs)
    every = create_model(parse_config({"model": {"dim": 16, "pixel_dim": 16}}, "explain"))
    with pytest.raises(UsageError, match=r"^--task 'detection' is a detection task; explain"):
        pick(every, "detection", None, {})


def _tiny(fusion: str):
    overrides = {"world": {"frames": T, "size": H}, "model": {"dim": 16, "pixel_dim": 16}}
    overrides["model"] |= {"fusion": fusion, "tasks": {"action": 1.0}}
    return create_model(parse_config(overrides, "explain")).eval()


@pytest.mark.parametrize("fusion", ["cross_attention", "transformer"])
def test_attention_fusions_give_a_video_map_of_the_clip(fusion) -> None:
    model = _tiny(fusion)
    batch = make_batch(1, T, H, W, seed=1, tasks=model.task_specs)
    attr = attention_map(model, batch, Target("action", "classification", 0, "static"))
    assert attr.video.shape == (T, H, W) and float(attr.video.min()) >= 0
    assert float(attr.video.sum()) > 0


def test_attention_is_refused_for_a_fusion_without_it() -> None:
    model = _tiny("concat")
    batch = make_batch(1, T, H, W, seed=1, tasks=model.task_specs)
    with pytest.raises(UsageError, match=r"^--method attention: the model's fusion"):
        attention_map(model, batch, Target("action", "classification", 0, "static"))
