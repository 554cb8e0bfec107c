"""Shared fixtures: tiny worlds that build in milliseconds."""

from __future__ import annotations

import logging

import pytest

from veilfed.data import synth


@pytest.fixture(autouse=True)
def _mlflow_outside_the_checkout(tmp_path, monkeypatch):
    """No test writes an MLflow store (``mlflow.db``, ``mlartifacts/``) into the working tree:
    unless a test points MLflow elsewhere itself, runs land in the test's own temp directory."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.fixture(autouse=True)
def _veilfed_logger_restored():  # type: ignore[no-untyped-def]
    """The ClientApp sends veilfed's log lines to its process's stream (``log_to_stream``: a
    handler, no propagation); in this process that would hide them from later tests' caplog."""
    logger = logging.getLogger("veilfed")
    saved = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture(scope="session")
def tiny_world() -> synth.WorldConfig:
    """8 frames of 32x32: enough for every task's ground truth, fast to encode and train."""
    return synth.WorldConfig(frames=8, height=32, width=32, next_frames=2, seed=7, p_forbidden=0.5)


@pytest.fixture(scope="session")
def tiny_clips(tiny_world: synth.WorldConfig) -> list[synth.Clip]:
    return list(synth.iter_world(tiny_world, 12))
