"""The synthetic world's ground truth that explanations are checked against: the symbol's
square holds every pixel the symbol changes, the word's span holds its buzz, and the
localisation report pairs each score with what a random attribution would score."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from veilfed.config import parse_config
from veilfed.data.synth import WorldConfig, generate_clip
from veilfed.data.synth_render import render
from veilfed.explain.localise import (
    clips,
    localisation,
    object_region,
    share,
    symbol_region,
    word_region,
)
from veilfed.model import create_model

WORLD = WorldConfig(frames=8, height=48, width=48, seed=7)


def _first(case: str):
    return next(clip for c, clip in clips(WORLD, 1) if c == case)


def test_the_symbol_region_holds_every_pixel_the_symbol_changes() -> None:
    clip = _first("symbol")
    shown = render(clip.labels, WORLD.height, WORLD.width)
    hidden = copy.deepcopy(clip.labels)
    hidden["forbidden"]["symbol"] = False
    changed = torch.from_numpy(
        np.abs(shown.astype(int) - render(hidden, WORLD.height, WORLD.width)).sum(-1) > 0
    )
    region = symbol_region(clip.labels, WORLD.frames, WORLD.height, WORLD.width)
    assert changed.any() and bool((changed & ~region).sum() == 0)
    assert float(region.float().mean()) < 0.05  # small: a random map puts little there
    assert not region[: clip.labels["forbidden"]["symbol_frame"]].any()


def test_the_word_span_holds_the_buzz() -> None:
    clip = _first("word")
    start, stop = clip.word_span
    assert stop - start == WORLD.sample_rate // 4
    rough = np.abs(np.diff(clip.audio))  # the 1.2 kHz square wave: large sample-to-sample jumps
    inside = rough[start : stop - 1].mean()
    outside = np.concatenate([rough[: max(0, start - 1)], rough[stop:]]).mean()
    assert inside > 3 * outside
    bins = word_region((start, stop), len(clip.audio), 16)
    assert 1 <= int(bins.sum()) <= 6
    for index in range(30):  # a span exactly when the word is said on an audio track
        other = generate_clip(WORLD, index)
        said = other.labels["forbidden"]["word"] and other.audio is not None
        assert (other.word_span is not None) == said


def test_object_region_and_share() -> None:
    clip = _first("object")
    region = object_region(clip.labels, WORLD.frames, WORLD.height, WORLD.width)
    assert region.shape == (WORLD.frames, WORLD.height, WORLD.width) and region.any()
    heat = torch.rand(region.shape)
    assert share(heat, region) == pytest.approx(float(region.float().mean()), abs=0.05)
    assert share(region.float(), region) == 1.0


def test_localisation_reports_each_case_beside_its_random_baseline() -> None:
    table = {"world": {"frames": 8, "size": 48}, "model": {"dim": 16, "pixel_dim": 16}}
    table["model"]["tasks"] = {"action": 1.0, "moderation": 1.0}
    torch.manual_seed(0)
    model = create_model(parse_config(table, "localise")).eval()
    report = localisation(model, WORLD, per_case=1, method="integrated_gradients")
    assert set(report) == {"symbol", "word", "object", "modality"}
    for row in report.values():
        assert 0.0 <= row["score"] <= 1.0 and 0.0 < row["random"] < 1.0 and row["clips"] >= 1
    assert report["symbol"]["random"] < 0.05 and report["modality"]["clips"] == 2
