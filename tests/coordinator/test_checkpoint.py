from __future__ import annotations

import math
import random

import numpy as np
import pytest

from veilfed.coordinator import checkpoint
from veilfed.errors import UsageError
from veilfed.federation.sections import ClientPrivacy, FederatedConfig
from veilfed.federation.settings import RunSettings


def test_checkpoint_roundtrip_restores_rng_and_state(tmp_path):
    random.seed(1)
    np.random.seed(2)
    ckpt = checkpoint.Checkpoint(
        round=3,
        arrays={"w": np.arange(4, dtype=np.float32)},
        strategy=[{"m_t": {"w": np.ones(4)}}],
        rng=checkpoint.rng_state(),
        history=[{"round": 3}],
        clients={"client-0000": {"epsilon": 1.5}},
        exhausted={"client-0001": "declining"},
    )
    expected = (random.random(), np.random.rand())
    checkpoint.save(tmp_path, ckpt)
    loaded = checkpoint.load(tmp_path)
    checkpoint.restore_rng(loaded.rng)
    assert (random.random(), np.random.rand()) == expected
    assert loaded.round == 3 and loaded.exhausted == ckpt.exhausted
    np.testing.assert_array_equal(loaded.arrays["w"], ckpt.arrays["w"])


def test_missing_and_corrupt_checkpoints(tmp_path):
    assert checkpoint.load(tmp_path) is None
    (tmp_path / checkpoint.FILE).write_bytes(b"not a pickle")
    with pytest.raises(UsageError, match="unreadable checkpoint"):
        checkpoint.load(tmp_path)


def test_settings_roundtrip_keeps_infinite_epsilon(tmp_path):
    s = RunSettings(
        run_id="r",
        run_dir=str(tmp_path),
        experiment="e",
        config={"name": "e"},
        store="s",
        key_file="k",
        seed=1,
        federated=FederatedConfig(clients=4, fraction=0.5),
        privacy=ClientPrivacy(epsilon=math.inf),
        tracking_uri="sqlite:///x.db",
    )
    s.save()
    loaded = RunSettings.load(tmp_path)
    assert loaded == s and not loaded.privacy.enabled
    assert loaded.federated.sampled_per_round == 2
