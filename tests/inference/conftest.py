"""A saved model of every head kind (untrained: these tests check the paths, not the learning)
and real encoded videos to predict on."""

from __future__ import annotations

from pathlib import Path

import pytest
from testkit.model import save_every_kind_model
from testkit.videos import class_clip, tone_clip


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_every_kind_model(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="session")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """long.mp4: 3.5 s with a tone and bright frames at [1.0, 1.5) s; short.mp4: one clip
    span (1 s at 8 fps), no audio track."""
    root = tmp_path_factory.mktemp("videos")
    (root / "long.mp4").write_bytes(tone_clip(3.5, (1.0, 1.5)))
    (root / "short.mp4").write_bytes(class_clip("street", 1, frames=8, audio=False))
    return {p.stem: p for p in root.iterdir()}
