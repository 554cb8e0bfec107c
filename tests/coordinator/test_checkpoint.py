from __future__ import annotations

import math
import random

import numpy as np
import pytest

from veilfed.coordinator import checkpoint
from veilfed.errors import UsageError
from veilfed.federation.sections import ClientPrivacy, FederatedConfig
from veilfed.federation.settings import RunSettings


def _checkpoint() -> checkpoint.Checkpoint:
    return checkpoint.Checkpoint(
        round=3,
        arrays={"w": np.arange(4, dtype=np.float32)},
        strategy=[{"m_t": {"w": np.ones(4)}}],
        history=[{"round": 3}],
        clients={"client-0000": {"epsilon": 1.5}},
        exhausted={"client-0001": "declining"},
        he_global=b"aggregate",
    )


def test_checkpoint_roundtrip_keeps_the_state(tmp_path):
    ckpt = _checkpoint()
    checkpoint.save(tmp_path, ckpt)
    loaded = checkpoint.load(tmp_path)
    assert (loaded.round, loaded.history, loaded.clients) == (3, ckpt.history, ckpt.clients)
    assert loaded.exhausted == ckpt.exhausted and loaded.he_global == b"aggregate"
    np.testing.assert_array_equal(loaded.arrays["w"], ckpt.arrays["w"])
    np.testing.assert_array_equal(loaded.strategy[0]["m_t"]["w"], np.ones(4))


def test_a_checkpoint_holding_global_rng_states_loads_without_them(tmp_path):
    """Files with an ``rng`` field (the global RNG states) resume; the field is dropped."""
    ckpt = _checkpoint()
    ckpt.rng = {"python": random.getstate(), "numpy": np.random.get_state()}  # type: ignore[attr-defined]
    checkpoint.save(tmp_path, ckpt)
    loaded = checkpoint.load(tmp_path)
    assert not hasattr(loaded, "rng")
    assert loaded.round == 3 and loaded.he_global == b"aggregate"
    assert loaded.clients == {"client-0000": {"epsilon": 1.5}}


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
