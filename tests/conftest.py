"""Shared fixtures: tiny worlds that build in milliseconds."""

from __future__ import annotations

import pytest

from veilfed.data import synth


@pytest.fixture(scope="session")
def tiny_world() -> synth.WorldConfig:
    """8 frames of 32x32: enough for every task's ground truth, fast to encode and train."""
    return synth.WorldConfig(frames=8, height=32, width=32, next_frames=2, seed=7, p_forbidden=0.5)


@pytest.fixture(scope="session")
def tiny_clips(tiny_world: synth.WorldConfig) -> list[synth.Clip]:
    return list(synth.iter_world(tiny_world, 12))
