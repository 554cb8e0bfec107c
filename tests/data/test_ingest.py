"""Ingesting real containers (MP4/MOV/MKV/WebM, odd sizes and rates, with/without audio)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import av
import numpy as np
import pytest

from veilfed.crypto.keys import FernetKey
from veilfed.data import schema, video
from veilfed.data.ingest import free_id, ingest, ingest_to
from veilfed.data.labels import load_labels
from veilfed.data.scan import scan
from veilfed.data.store import EncryptedStore
from veilfed.errors import UsageError
from veilfed.tasks import task_specs


def make_video(
    path: Path,
    codec: str,
    size: tuple[int, int],
    fps: int,
    frames: int = 6,
    pix_fmt: str = "yuv420p",
) -> bytes:
    """A small real video file in ``path``'s container (no audio)."""
    h, w = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        for t in range(frames):
            img = np.zeros((h, w, 3), np.uint8)
            img[:, : (t + 1) * w // frames] = (200, 30, 90)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path.read_bytes()


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (8, 36, 48, 3), dtype=np.uint8)
    audio = (0.2 * np.sin(np.linspace(0, 200, 16000))).astype(np.float32)
    paths = {
        "mp4": src / "talk.mp4",
        "mkv": src / "nested" / "walk.mkv",
        "webm": src / "wave.webm",
        "mov": src / "Still.MOV",
    }
    paths["mp4"].write_bytes(video.encode_mp4(frames, audio, 8))
    make_video(paths["mkv"], "mpeg4", (30, 40), 12)
    make_video(paths["webm"], "libvpx", (24, 32), 25)
    make_video(paths["mov"], "mjpeg", (50, 66), 5, pix_fmt="yuvj420p")
    (src / "notes.txt").write_text("not a video")  # ignored inside directories
    return paths


def test_ingest_any_container(sources, tmp_path) -> None:
    key = FernetKey.generate()
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "file,action,sentiment,moderation,transcript\n"
        "talk.mp4,left,positive,1,hello there\nwalk,3,0,false,\n"
    )
    store = EncryptedStore.create(tmp_path / "store", key)
    summary = ingest([tmp_path / "src"], store, labels)
    assert summary.skipped == []
    got = {c["clip_id"]: c for c in summary.ingested}
    assert set(got) == {"talk", "walk", "wave", "Still"}
    assert got["talk"]["has_audio"] and not got["walk"]["has_audio"]
    assert (got["Still"]["width"], got["Still"]["height"]) == (66, 50)
    reopened = EncryptedStore.open(store.root, key)
    data, record = reopened.read("talk")
    assert data == sources["mp4"].read_bytes()  # original bytes, losslessly
    # Class names are stored (an index is read as one), so a reordered class list still reads
    assert record["action"] == "left" and record["sentiment"] == "positive"
    assert record["moderation"] == 1.0
    assert record["transcript"] == "hello there" and record["synthetic"] is False
    assert reopened.read("walk")[1]["action"] == "up"
    decoded = video.decode(reopened.read("wave")[0], 4, (16, 16))
    assert decoded.video.shape == (4, 16, 16, 3)
    assert scan([tmp_path / "store"], [p.read_bytes() for p in sources.values()]) == []


def test_unreadable_skipped_with_reason_and_duplicates(sources, tmp_path) -> None:
    store = EncryptedStore.create(tmp_path / "store", FernetKey.generate())
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(sources["mp4"].read_bytes()[:300])
    copy = tmp_path / "talk.mp4"
    copy.write_bytes(sources["mp4"].read_bytes())
    summary = ingest([sources["mp4"], copy, text, broken, tmp_path / "missing.mkv"], store)
    assert [c["clip_id"] for c in summary.ingested] == ["talk"]
    reasons = {Path(s["file"]).name: s["reason"] for s in summary.skipped}
    assert set(reasons) == {"talk.mp4", "notes.txt", "broken.mp4", "missing.mkv"}
    assert "same file as" in reasons["talk.mp4"] and "video" in reasons["notes.txt"]
    assert all("\n" not in r for r in reasons.values())
    assert text.read_text() == "hello"  # inputs untouched


def test_same_stem_gets_distinct_ids(sources, tmp_path) -> None:
    store = EncryptedStore.create(tmp_path / "store", FernetKey.generate())
    other = tmp_path / "other"
    other.mkdir()
    make_video(other / "talk.mkv", "mpeg4", (16, 16), 4)
    summary = ingest([sources["mp4"], other / "talk.mkv"], store)
    ids = [c["clip_id"] for c in summary.ingested]
    assert ids[0] == "talk" and ids[1].startswith("talk-") and len(set(ids)) == 2


def test_labels_json_and_bad_labels(tmp_path) -> None:
    preset = task_specs(dict.fromkeys(schema.TASKS, 1.0))
    good = tmp_path / "l.json"
    good.write_text(json.dumps([{"file": "a.mp4", "quality": 0.5, "transcript": "hi"}]))
    assert load_labels(good, preset) == {"a.mp4": {"quality": 0.5, "transcript": "hi"}}
    bad = tmp_path / "bad.csv"
    bad.write_text("file,action\na.mp4,flying\n")
    with pytest.raises(UsageError, match=r"line 2 \(a.mp4\): field 'action': 'flying' is not"):
        load_labels(bad, preset)
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("name,action\na.mp4,left\n")
    with pytest.raises(UsageError, match="needs a 'file' column"):
        load_labels(nocol, preset)
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("file,note\na.mp4,x\n")
    with pytest.raises(UsageError, match=r"field 'note' is not a declared task"):
        load_labels(unknown, preset)


def test_reingest_is_deduplicated_across_invocations(sources, tmp_path) -> None:
    key = FernetKey.generate()
    store = EncryptedStore.create(tmp_path / "store", key)
    assert len(ingest([tmp_path / "src"], store).ingested) == 4
    copy = tmp_path / "copy-of-talk.mp4"
    copy.write_bytes(sources["mp4"].read_bytes())
    again = ingest([tmp_path / "src", copy], EncryptedStore.open(store.root, key))
    assert again.ingested == [] and again.already_stored == 5
    assert all("already in the store" in s["reason"] for s in again.skipped)
    assert EncryptedStore.open(store.root, key).ids() == ["Still", "talk", "walk", "wave"]


def test_ingest_to_creates_the_store_only_for_a_usable_video(sources, tmp_path) -> None:
    key = FernetKey.generate()
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    empty = ingest_to(tmp_path / "none", key, [junk])
    assert empty.ingested == [] and len(empty.skipped) == 1
    assert not (tmp_path / "none").exists()
    done = ingest_to(tmp_path / "s", key, [junk, sources["mp4"]], {"talk": {"action": "up"}})
    assert [c["clip_id"] for c in done.ingested] == ["talk"]
    assert EncryptedStore.open(tmp_path / "s", key).labels("talk")["action"] == "up"


def test_a_crafted_file_name_cannot_take_over_a_stored_clip(tmp_path) -> None:
    """Attack: name a file after the id a later file would get on a stem clash (stem-<sha8>)."""
    key = FernetKey.generate()
    rng = np.random.default_rng(7)
    x, y, z = (
        video.encode_mp4(rng.integers(0, 255, (4, 16, 16, 3), np.uint8), None, 4) for _ in "xyz"
    )
    dirs = [tmp_path / d for d in ("d1", "d2", "d3")]
    for d in dirs:
        d.mkdir()
    (dirs[0] / "a.mp4").write_bytes(x)
    (dirs[1] / f"a-{hashlib.sha256(y).hexdigest()[:8]}.mp4").write_bytes(z)
    (dirs[2] / "a.mp4").write_bytes(y)
    for d in dirs:
        assert len(ingest_to(tmp_path / "store", key, [d]).ingested) == 1
    store = EncryptedStore.open(tmp_path / "store", key)
    assert len(store) == 3
    assert {store.read(cid)[0] for cid in store.ids()} == {x, y, z}  # nothing replaced
    assert f"a-{hashlib.sha256(y).hexdigest()[:16]}" in store.ids()  # y moved on to a free id


def test_free_id_walks_past_every_taken_candidate(tmp_path) -> None:
    store = EncryptedStore.create(tmp_path / "store", FernetKey.generate())
    digest = "ab" * 32
    taken = ["a", f"a-{digest[:8]}", f"a-{digest[:16]}", f"a-{digest}", f"a-{digest}-2"]
    with store.batch():
        for cid in taken:
            assert free_id(store, "a", digest) == cid
            store.put(cid, b"v", {})
    assert free_id(store, "a", digest) == f"a-{digest}-3"


def _remux(src: Path, dst: Path) -> None:
    """The same coded packets in another file (no decode, no re-encode)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)


def test_remuxed_or_padded_copies_are_duplicates(sources, tmp_path) -> None:
    """Attack: bypass the exact-bytes dedup with one trailing byte or another container."""
    store = EncryptedStore.create(tmp_path / "store", FernetKey.generate())
    assert len(ingest([sources["mp4"]], store).ingested) == 1
    padded = tmp_path / "padded.mp4"
    padded.write_bytes(sources["mp4"].read_bytes() + b"\0")
    remuxed = tmp_path / "remuxed.mov"
    _remux(sources["mp4"], remuxed)
    assert remuxed.read_bytes() != sources["mp4"].read_bytes()
    again = ingest([padded, remuxed], store)
    assert again.ingested == [] and again.already_stored == 2
    assert all("same decoded video and audio as clip 'talk'" in s["reason"] for s in again.skipped)
    record = store.labels("talk")["source"]
    assert record["content_sha256"] == video.content_digest(remuxed.read_bytes())[1]
    # a changed picture is a different video: positive control on the content digest
    other = tmp_path / "other.mp4"
    frames = np.random.default_rng(0).integers(0, 255, (8, 36, 48, 3), dtype=np.uint8)
    frames[0, 0, 0] ^= 0xFF
    other.write_bytes(video.encode_mp4(frames, None, 8))
    assert len(ingest([other], store).ingested) == 1
