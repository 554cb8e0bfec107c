"""Encrypted store: round trip, tamper detection per chunk, keys, rotation crash-safety, loader."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from veilfed.crypto.keys import FernetKey
from veilfed.data import synth
from veilfed.data.dataset import ClipDataset, MemorySource, collate
from veilfed.data.files import encode_clip
from veilfed.data.records import CLIP_MAGIC, ClipEntry, join_records
from veilfed.data.scan import scan
from veilfed.data.store import EncryptedStore
from veilfed.data.store_rotate import rotate_store
from veilfed.errors import CheckFailed, UsageError

CHUNK = 1024


@pytest.fixture
def key() -> FernetKey:
    return FernetKey.generate()


@pytest.fixture
def filled(tmp_path: Path, key: FernetKey) -> tuple[EncryptedStore, dict[str, bytes]]:
    store = EncryptedStore.create(tmp_path / "store", key, chunk_size=CHUNK)
    clips = {"a": os.urandom(3 * CHUNK + 17), "b": os.urandom(2 * CHUNK), "c": b"tiny"}
    with store.batch():
        for cid, data in clips.items():
            store.put(cid, data, {"clip": cid, "action": 2})
    return EncryptedStore.open(store.root, key), clips


def _rewrite(store: EncryptedStore, clip_id: str, records: list) -> None:
    path = store.root / "clips" / store.entry(clip_id).file
    path.write_bytes(CLIP_MAGIC + join_records(records))


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_roundtrip_and_layout(filled, key) -> None:
    store, clips = filled
    assert store.ids() == sorted(clips)
    for cid, data in clips.items():
        got, labels = store.read(cid)
        assert got == data and labels == {"clip": cid, "action": 2}
    assert store.entry("a").chunks == 4 and store.entry("c").chunks == 1
    assert store.verify() == 3
    files = list((store.root / "clips").iterdir())
    assert len(files) == 3 and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert not list(store.root.rglob("*.tmp"))
    text = (store.root / "store.json").read_text()
    assert '"a"' not in text and "action" not in text  # clip ids and labels are encrypted too


def test_an_existing_id_is_never_replaced_by_default(filled, key) -> None:
    store, _ = filled
    before = store.read("b")
    with pytest.raises(UsageError, match="clip 'b' is already in the store"):
        store.put("b", b"other bytes", {"v": 2})
    with pytest.raises(UsageError, match="already in the store"), store.batch():
        store.put("new", b"n", {})
        store.put_records("a", store.records("b"), store.entry("b"))
    reopened = EncryptedStore.open(store.root, key)
    assert reopened.read("b") == before and "new" not in reopened  # the batch committed nothing


def test_replace_clip_removes_old_file(filled, key) -> None:
    store, _ = filled
    old = store.entry("b").file
    store.put("b", b"new bytes", {"v": 2}, replace=True)
    reopened = EncryptedStore.open(store.root, key)
    assert reopened.read("b") == (b"new bytes", {"v": 2})
    assert not (store.root / "clips" / old).exists()


TAMPERS = {
    "flip": ("chunk 1 does not decrypt", lambda r, other: r[:2] + [_flip(r[2])] + r[3:]),
    "swap": ("chunk 1 is chunk 2", lambda r, other: r[:2] + [r[3], r[2]] + r[4:]),
    "delete": ("chunk 3 missing", lambda r, other: r[:-1]),
    "delete_middle": ("chunk 1 is chunk 2", lambda r, other: r[:2] + r[3:]),
    "duplicate": ("chunk 2 is chunk 1", lambda r, other: r[:3] + [r[2]] + r[3:]),
    "from_other_clip": ("chunk 1 belongs to clip 'b'", lambda r, other: r[:2] + [other[2]] + r[3:]),
    "extra": ("chunk 4 is chunk 3", lambda r, other: r + [r[-1]]),
    "labels_swapped": ("labels record belongs to clip 'b'", lambda r, other: [other[0]] + r[1:]),
}


def _flip(token) -> bytes:
    data = bytearray(token)
    data[len(data) // 2] ^= 0x01
    return bytes(data)


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_tampered_chunks_detected_no_partial_plaintext(filled, key, tamper: str) -> None:
    store, _ = filled
    message, edit = TAMPERS[tamper]
    _rewrite(store, "a", edit(store.records("a"), store.records("b")))
    before = _snapshot(store.root)
    reopened = EncryptedStore.open(store.root, key)
    with pytest.raises(CheckFailed, match=message) as err:
        reopened.read("a")
    assert "'a'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckFailed, match="clip 'a'"):
        reopened.verify()
    assert reopened.read("b")[0]  # other clips still readable
    assert _snapshot(store.root) == before  # nothing was modified or written


def test_replayed_old_version_detected(filled, key) -> None:
    store, _ = filled
    old_records = [bytes(r) for r in store.records("c")]
    store.put("c", b"tiny", {"clip": "c", "version": 2}, replace=True)
    _rewrite(store, "c", old_records)
    with pytest.raises(CheckFailed, match="from another version"):
        EncryptedStore.open(store.root, key).read("c")


def test_missing_clip_file(filled, key) -> None:
    store, _ = filled
    (store.root / "clips" / store.entry("b").file).unlink()
    with pytest.raises(CheckFailed, match="clip 'b' file .* is missing"):
        EncryptedStore.open(store.root, key).verify()


@pytest.mark.parametrize("cut", [10, -40])
def test_truncated_or_tampered_manifest(filled, key, cut: int) -> None:
    store, _ = filled
    path = store.root / "store.json"
    text = path.read_text()
    if cut > 0:
        path.write_text(text[:cut])
        match = "truncated or damaged"
    else:
        i = text.index('"manifest": "') + 40
        path.write_text(text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1 :])
        match = "does not authenticate"
    with pytest.raises(CheckFailed, match=match):
        EncryptedStore.open(store.root, key)


def test_wrong_key_and_not_a_store(filled, tmp_path) -> None:
    store, _ = filled
    with pytest.raises(UsageError, match="encrypted with key"):
        EncryptedStore.open(store.root, FernetKey.generate())
    with pytest.raises(UsageError, match="not a veilfed store"):
        EncryptedStore.open(tmp_path / "nowhere", FernetKey.generate())


def test_empty_store_verify_and_create_refusals(tmp_path, key) -> None:
    store = EncryptedStore.create(tmp_path / "s", key)
    with pytest.raises(UsageError, match="store is empty"):
        EncryptedStore.open(store.root, key).verify()
    with pytest.raises(UsageError, match="already exists"):
        EncryptedStore.create(tmp_path / "s", key)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(UsageError, match="not an empty directory"):
        EncryptedStore.create(tmp_path / "busy", key)


def test_rotation_switches_keys(filled, key) -> None:
    store, clips = filled
    new = FernetKey.generate()
    assert rotate_store(store.root, key, new) == 3
    with pytest.raises(UsageError, match="rotate"):
        EncryptedStore.open(store.root, key)
    rotated = EncryptedStore.open(store.root, new)
    assert {c: rotated.read(c)[0] for c in rotated.ids()} == clips
    assert len(list((store.root / "clips").iterdir())) == 3
    assert scan([store.root], list(clips.values())) == []
    files = b"".join(p.read_bytes() for p in store.root.rglob("*") if p.is_file())
    assert key.secret() not in files and new.secret() not in files


@pytest.mark.parametrize(
    ("step", "crash_after"),
    [("put_records", 0), ("put_records", 1), ("put_records", 2), ("commit", 0)],
)
def test_rotation_crash_leaves_store_readable(
    filled, key, monkeypatch, step: str, crash_after: int
) -> None:
    store, clips = filled
    new = FernetKey.generate()
    real = getattr(EncryptedStore, step)
    calls = {"n": 0}

    def crashing(self, *args, **kwargs):
        if calls["n"] >= crash_after:
            raise KeyboardInterrupt("power cut")
        calls["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(EncryptedStore, real.__name__, crashing)
    with pytest.raises(KeyboardInterrupt):
        rotate_store(store.root, key, new)
    monkeypatch.undo()
    old_view = EncryptedStore.open(store.root, key)  # still wholly the old store
    assert {c: old_view.read(c)[0] for c in old_view.ids()} == clips
    assert rotate_store(store.root, key, new) == 3  # re-run finishes and sweeps leftovers
    new_view = EncryptedStore.open(store.root, new)
    assert {c: new_view.read(c)[0] for c in new_view.ids()} == clips
    assert len(list((store.root / "clips").iterdir())) == 3


def test_rotation_refuses_bad_clip(filled, key) -> None:
    store, _ = filled
    _rewrite(store, "a", store.records("a")[:-1])
    with pytest.raises(CheckFailed, match="clip 'a'"):
        rotate_store(store.root, key, FernetKey.generate())
    assert EncryptedStore.open(store.root, key).read("b")


def test_dataset_loader_workers_read_from_store(tmp_path, key) -> None:
    world = synth.WorldConfig(frames=4, height=32, width=32, seed=3)
    clips = list(synth.iter_world(world, 4))
    store = EncryptedStore.create(tmp_path / "s", key)
    store.put_many((c.clip_id, encode_clip(c), c.labels) for c in clips)
    plain = ClipDataset(MemorySource(clips, encode=True), world)
    enc = ClipDataset(EncryptedStore.open(tmp_path / "s", key), world)
    loader = torch.utils.data.DataLoader(  # forkserver: see test_dataloader_with_workers
        enc, batch_size=2, num_workers=2, collate_fn=collate, multiprocessing_context="forkserver"
    )
    batches = list(loader)
    assert sum(len(b["clip_id"]) for b in batches) == 4
    by_id = {cid: b["video"][i] for b in batches for i, cid in enumerate(b["clip_id"])}
    for i, cid in enumerate(plain.ids):
        assert torch.equal(by_id[cid], plain[i]["video"])
    found = scan(
        [tmp_path / "s"],
        [encode_clip(c) for c in clips] + [np.ascontiguousarray(c.video).tobytes() for c in clips],
    )
    assert found == []


def test_chunk_header_binds_length(filled, key, monkeypatch) -> None:
    store, _ = filled
    entry = store.entry("a")
    forged = ClipEntry(entry.file, entry.chunks, entry.length - 1, entry.nonce)
    monkeypatch.setitem(store._clips, "a", forged)
    with pytest.raises(CheckFailed, match="chunk 0 disagrees with the manifest"):
        store.read("a")


def test_two_writers_on_stale_handles_lose_nothing(filled, key) -> None:
    """Each writer opened the store before the other wrote: both clips survive."""
    store, clips = filled
    first, second = EncryptedStore.open(store.root, key), EncryptedStore.open(store.root, key)
    first.put("x", b"from the first writer", {})
    second.put("y", b"from the second writer", {})  # re-reads the manifest under the lock
    with second.batch():
        second.put("z", b"z", {})
    view = EncryptedStore.open(store.root, key)
    assert view.ids() == sorted([*clips, "x", "y", "z"])
    assert view.read("x")[0] == b"from the first writer" and view.verify() == 6
    assert len(list((store.root / "clips").iterdir())) == 6


def test_rotation_cannot_sweep_an_open_writers_clips(filled, key, monkeypatch) -> None:
    """A writer mid-batch holds the lock: a rotation waits (here: refuses) and sweeps nothing."""
    store, clips = filled
    monkeypatch.setenv("VEILFED_STORE_LOCK_TIMEOUT", "0.2")
    writer = EncryptedStore.open(store.root, key)
    with writer.batch():
        writer.put("fresh", b"not yet in the manifest", {})
        with pytest.raises(UsageError, match="another veilfed command is still writing"):
            rotate_store(store.root, key, FernetKey.generate())
        other = EncryptedStore.open(store.root, key)
        with pytest.raises(UsageError, match="still writing"):
            other.put("late", b"late", {})
        assert len(list((store.root / "clips").iterdir())) == 4  # the fresh file survived
    view = EncryptedStore.open(store.root, key)
    assert view.read("fresh")[0] == b"not yet in the manifest" and "late" not in view


def test_a_writer_whose_store_was_rotated_meanwhile_refuses(filled, key) -> None:
    store, _ = filled
    stale = EncryptedStore.open(store.root, key)
    new = FernetKey.generate()
    rotate_store(store.root, key, new)
    with pytest.raises(UsageError, match="not key"):
        stale.put("x", b"under the old key", {})
    assert "x" not in EncryptedStore.open(store.root, new)


def test_create_is_one_store_even_when_raced(tmp_path, key) -> None:
    root = tmp_path / "s"
    first = EncryptedStore.create(root, key)
    again = EncryptedStore.create(root, key, exist_ok=True)
    first.put("a", b"a", {})
    again.put("b", b"b", {})
    assert EncryptedStore.open(root, key).ids() == ["a", "b"]
    with pytest.raises(UsageError, match="already exists"):
        EncryptedStore.create(root, key)


def test_labels_and_content_hashes_read_only_the_labels_record(filled, key) -> None:
    store, _ = filled
    store.put("real", b"video", {"source": {"sha256": "ab" * 32}, "action": 1})
    assert store.labels("a") == {"clip": "a", "action": 2}
    assert store.content_hashes() == {"ab" * 32: "real"}
    entry = store.entry("b")
    path = store.root / "clips" / entry.file
    records = store.records("a")
    path.write_bytes(CLIP_MAGIC + join_records(records))  # clip a's labels under b's name
    with pytest.raises(CheckFailed, match="clip 'b' labels record does not check out"):
        store.labels("b")


def test_pickled_store_carries_no_lock(filled, key) -> None:
    store, _ = filled
    with store.batch():
        copy = pickle.loads(pickle.dumps(store))
    assert copy._lock is None and copy.read("a")
