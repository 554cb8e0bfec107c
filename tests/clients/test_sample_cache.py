"""A client decodes its clips once per process and store version, in memory only."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from testkit.fed import make_run, write_config

from veilfed.clients.evaluation import evaluate_round
from veilfed.clients.inputs import client_inputs
from veilfed.clients.sample_cache import CACHE, CachedClips, SampleCache, sample_bytes
from veilfed.clients.trainer import split_shard, train_round
from veilfed.config import load_config
from veilfed.crypto.keys import read_key_file
from veilfed.data.store import EncryptedStore
from veilfed.errors import UsageError
from veilfed.federation.digest import model_digest
from veilfed.federation.sections import FederatedConfig
from veilfed.federation.weights import initial_arrays


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Every clip the real encrypted store decrypts, in order (the call goes through)."""
    seen: list[str] = []
    real = EncryptedStore.read

    def read(self, clip_id):
        seen.append(clip_id)
        return real(self, clip_id)

    monkeypatch.setattr(EncryptedStore, "read", read)
    CACHE.clear()
    yield seen
    CACHE.clear()


def _files(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and "mlflow" not in p.name
    }


def _client(tmp_path: Path, extra: str = ""):
    settings, tracker = make_run(tmp_path, write_config(tmp_path, extra=extra), epsilon=math.inf)
    tracker.finish()
    return settings, client_inputs(settings, {"partition-id": 0})


def _train(settings, inputs, rnd: int) -> None:
    arrays = initial_arrays(settings)
    result = train_round(settings, inputs, rnd, arrays, model_digest=model_digest(arrays, None))
    assert result.declined is None


def test_the_second_round_decodes_nothing_and_writes_nothing(tmp_path: Path, reads) -> None:
    settings, inputs = _client(tmp_path)
    train_ids, eval_ids = split_shard(settings, inputs)
    before = _files(tmp_path)
    _train(settings, inputs, 1)
    assert sorted(set(reads)) == train_ids  # each training clip decrypted and decoded once
    assert len(reads) == len(train_ids)
    evaluate_round(settings, inputs, initial_arrays(settings))
    reads.clear()
    _train(settings, inputs, 2)
    evaluate_round(settings, inputs, initial_arrays(settings))
    assert reads == []  # round 2 and its evaluation: all from memory
    assert CACHE.hits >= len(train_ids) + len(eval_ids)
    assert _files(tmp_path) == before  # no file appeared or grew: the cache is memory only


def test_a_changed_store_is_read_again(tmp_path: Path, reads) -> None:
    settings, inputs = _client(tmp_path)
    train_ids, _ = split_shard(settings, inputs)
    _train(settings, inputs, 1)
    reads.clear()
    store = EncryptedStore.open(settings.store, read_key_file(settings.key_file))
    video, labels = store.read(train_ids[0])
    store.put("added-clip", video, labels)  # any write: a new manifest
    reads.clear()
    _train(settings, inputs, 2)
    assert sorted(set(reads)) == train_ids


def test_a_zero_cap_decodes_every_round(tmp_path: Path, reads) -> None:
    settings, inputs = _client(tmp_path, extra="client_cache_mb = 0\n")
    train_ids, _ = split_shard(settings, inputs)
    _train(settings, inputs, 1)
    reads.clear()
    _train(settings, inputs, 2)
    assert sorted(reads) == train_ids and len(CACHE) == 0


def test_the_cap_evicts_least_recently_used_and_augments_per_use() -> None:
    sample = {"clip_id": "a", "video": torch.zeros(10), "targets": {"x": torch.zeros(5)}}
    assert sample_bytes(sample) == 60
    cache = SampleCache(cap_bytes=130)
    built: list[str] = []

    def build(name: str):
        built.append(name)
        return {**sample, "clip_id": name}

    for name in ("a", "b", "a", "c", "a", "b"):  # c evicts b (a was used more recently)
        cache.get_or_build(name, lambda n=name: build(n))
    assert built == ["a", "b", "c", "b"] and cache.used <= 130

    class Clips:
        ids = ["a"]

        def __len__(self) -> int:
            return 1

        def __getitem__(self, i: int):
            return build("a")

    def augment(s):
        return {**s, "video": s["video"] + 1}

    clips = CachedClips(Clips(), ("store",), augment=augment, cache=SampleCache(1000))
    first, second = clips[0], clips[0]
    assert torch.equal(first["video"], torch.ones(10)) and torch.equal(
        second["video"], first["video"]
    )
    assert torch.equal(clips.cache.get_or_build(("store", "a"), dict)["video"], torch.zeros(10))


def test_the_cap_is_a_federated_field(tmp_path: Path) -> None:
    assert FederatedConfig().client_cache_mb == 1024
    path = tmp_path / "exp.toml"
    path.write_text("[federated]\nclient_cache_mb = -1\n")
    with pytest.raises(UsageError, match=r"exp.toml: federated.client_cache_mb must be >= 0"):
        load_config(path)
