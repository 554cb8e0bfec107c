"""Shard bundles: per-client keys, tamper detection, tokens travel unchanged into the node store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from veilfed.crypto.keys import FernetKey
from veilfed.data.bundle import (
    MAGIC,
    client_key,
    export_bundle,
    import_bundle,
    partition_ids,
    read_bundle,
    read_clip_list,
)
from veilfed.data.records import join_records, split_records
from veilfed.data.scan import scan
from veilfed.data.store import EncryptedStore
from veilfed.errors import CheckFailed, UsageError


@pytest.fixture
def owner(tmp_path: Path) -> tuple[EncryptedStore, dict[str, bytes]]:
    key = FernetKey.generate()
    store = EncryptedStore.create(tmp_path / "owner", key, chunk_size=1024)
    clips = {
        f"clip-{i}": b"\x00\x00\x00\x18ftypisom" + os.urandom(1500 + 300 * i) for i in range(4)
    }
    store.put_many((cid, data, {"i": cid}) for cid, data in clips.items())
    return store, clips


def test_export_import_roundtrip_unchanged_tokens(owner, tmp_path) -> None:
    store, clips = owner
    ka = client_key(store.keys[0], "client-0000")
    summary = export_bundle(store, "client-0000", tmp_path / "a.vfs", clip_ids=["clip-1", "clip-3"])
    assert summary["clips"] == 2 and summary["key_id"] == ka.key_id
    result = import_bundle(tmp_path / "a.vfs", tmp_path / "node", ka)
    assert result == {"client": "client-0000", "clips": 2, "store": str(tmp_path / "node")}
    node = EncryptedStore.open(tmp_path / "node", ka)
    assert node.ids() == ["clip-1", "clip-3"]
    assert node.read("clip-3") == (clips["clip-3"], {"i": "clip-3"})
    bundle_tokens = {
        bytes(t) for t in split_records((tmp_path / "a.vfs").read_bytes()[len(MAGIC) :], "b")
    }
    node_tokens = {bytes(t) for cid in node.ids() for t in node.records(cid)}
    assert node_tokens <= bundle_tokens  # the bytes that travel are the bytes at rest
    assert scan([tmp_path / "a.vfs", tmp_path / "node"], list(clips.values())) == []


def test_node_a_key_cannot_open_node_b_bundle(owner, tmp_path) -> None:
    store, _ = owner
    export_bundle(store, "client-0001", tmp_path / "b.vfs")
    ka = client_key(store.keys[0], "client-0000")
    with pytest.raises(UsageError, match="bundle is for client client-0001"):
        read_bundle(tmp_path / "b.vfs", ka)
    # even if the header is edited to claim A's key id, A's key cannot decrypt B's manifest
    data = (tmp_path / "b.vfs").read_bytes()
    kb = client_key(store.keys[0], "client-0001")
    forged = data.replace(kb.key_id.encode(), ka.key_id.encode())
    (tmp_path / "forged.vfs").write_bytes(forged)
    with pytest.raises(CheckFailed, match="does not authenticate"):
        read_bundle(tmp_path / "forged.vfs", ka)
    assert not (tmp_path / "node").exists()


def test_explicit_client_key(owner, tmp_path) -> None:
    store, clips = owner
    ck = FernetKey.generate()
    export_bundle(store, "n1", tmp_path / "x.vfs", ck)
    _, _, got = read_bundle(tmp_path / "x.vfs", ck)
    assert [c for c, _, _ in got] == sorted(clips)


def _records(path: Path) -> list[bytes]:
    return [bytes(r) for r in split_records(path.read_bytes()[len(MAGIC) :], str(path))]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r[:3] + [r[4], r[3]] + r[5:], "clip-0' chunk 0 is chunk 1.*export the bundle"),
        (lambda r: r[:-1], "has 1 chunks, manifest says 2"),
        (
            lambda r: r[:4] + [bytes([r[4][0]]) + bytes([r[4][1] ^ 1]) + r[4][2:]] + r[5:],
            "does not decrypt",
        ),
        (lambda r: r[:2] + [r[6]] + r[3:], "labels record belongs to clip 'clip-1'"),
        (lambda r: r[:1] + [r[1][:-5]] + r[2:], "manifest does not authenticate"),
    ],
)
def test_tampered_bundle_detected(owner, tmp_path, edit, message: str) -> None:
    store, _ = owner
    path = tmp_path / "t.vfs"
    export_bundle(store, "c", path, clip_ids=["clip-0", "clip-1"])
    path.write_bytes(MAGIC + join_records(edit(_records(path))))
    with pytest.raises(CheckFailed, match=message):
        import_bundle(path, tmp_path / "node", client_key(store.keys[0], "c"))
    assert not (tmp_path / "node").exists()


def test_truncated_bundle_and_not_a_bundle(owner, tmp_path) -> None:
    store, _ = owner
    path = tmp_path / "t.vfs"
    export_bundle(store, "c", path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckFailed, match="truncated"):
        read_bundle(path, client_key(store.keys[0], "c"))
    other = tmp_path / "video.mp4"
    other.write_bytes(b"not a bundle")
    with pytest.raises(UsageError, match="not a veilfed bundle"):
        read_bundle(other, client_key(store.keys[0], "c"))


def test_partition_and_clip_list(owner, tmp_path) -> None:
    store, clips = owner
    shares = [partition_ids(store, f"client-{i:04d}", 2) for i in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(clips) and shares[0] and shares[1]
    with pytest.raises(UsageError, match="client-0000 .. client-0001"):
        partition_ids(store, "client-0009", 2)
    listing = tmp_path / "ids.txt"
    listing.write_text("clip-0\n\nclip-2\n")
    assert read_clip_list(listing) == ["clip-0", "clip-2"]
    with pytest.raises(UsageError, match="no clip 'nope'"):
        export_bundle(store, "c", tmp_path / "x.vfs", clip_ids=["nope"])
    assert not (tmp_path / "x.vfs").exists()
