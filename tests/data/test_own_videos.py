"""A data owner's own videos: declared tasks and classes, annotations in common formats, long
files in windows, self-supervised targets and missing modalities, from real encoded files through
the encrypted store to the training samples; every bad input refused before the store changes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from testkit.model import tiny
from testkit.videos import FPS, RATE, class_clip, tone_clip, tree_digest, write_class_videos

from veilfed.crypto.keys import FernetKey
from veilfed.data import synth
from veilfed.data.dataset import ClipDataset, collate, in_order
from veilfed.data.ingest import WindowPlan, ingest_to
from veilfed.data.labels import LabelSource
from veilfed.data.store import EncryptedStore
from veilfed.data.targets import degrade
from veilfed.data.windowed import OneWindowPerClip, window_ids
from veilfed.errors import UsageError
from veilfed.metrics import fit_baselines
from veilfed.model import create_model, score
from veilfed.tasks import UNKNOWN_BOX, task_specs

TASKS = {
    "scene": {"kind": "classification", "classes": ["cartoon", "street"]},
    "tags": {"kind": "multilabel", "classes": ["indoor", "night", "crowd"]},
    "mos": {"kind": "regression", "range": [1.0, 5.0]},
}
WORLD = synth.WorldConfig(frames=8, height=32, width=32, fps=FPS)


@pytest.fixture
def key() -> FernetKey:
    return FernetKey.generate()


def _labels_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("file,scene,tags,mos,transcript\n" + "\n".join(rows) + "\n")
    return path


def test_declared_classes_flow_from_a_labels_file_to_the_targets(tmp_path, key) -> None:
    write_class_videos(tmp_path / "in", per_class=1)
    labels = _labels_csv(
        tmp_path / "labels.csv",
        ["cartoon-00.mp4,cartoon,indoor;crowd,4.5,hello there", "street-00,street,,2,"],
    )
    specs = task_specs(TASKS)
    summary = ingest_to(tmp_path / "s", key, [tmp_path / "in"], [LabelSource(labels)], specs)
    assert len(summary.ingested) == 2
    store = EncryptedStore.open(tmp_path / "s", key)
    record = store.labels("cartoon-00")
    assert record["scene"] == "cartoon" and record["tags"] == ["indoor", "crowd"]
    assert record["mos"] == 4.5 and record["transcript"] == "hello there"
    ds = ClipDataset(store, WORLD, tasks=specs)
    batch = collate([ds[0], ds[1]])
    assert batch["targets"]["scene"].tolist() == [0, 1]
    assert batch["targets"]["tags"][0].tolist() == [1.0, 0.0, 1.0]
    assert batch["targets"]["mos"].tolist() == [4.5, 2.0]
    assert batch["target_mask"]["tags"].tolist() == [True, False]  # street has no tags
    assert batch["modality_mask"][:, 2].tolist() == [True, False]  # transcript -> text
    model = create_model(tiny(tasks=TASKS))
    total, per_task = model.loss(model(batch), batch)
    total.backward()
    assert set(per_task) == set(TASKS) and torch.isfinite(total)


def test_coco_boxes_land_on_the_frames_they_annotate(tmp_path, key) -> None:
    (tmp_path / "road.mp4").write_bytes(class_clip("street", 1, frames=16))
    coco = {
        "images": [{"id": 1, "video": "road.mp4", "timestamp": 0.5, "width": 32, "height": 32}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 2, "bbox": [8, 8, 8, 8]}],
        "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "bus"}],
    }
    (tmp_path / "boxes.json").write_text(json.dumps(coco))
    specs = task_specs({"vehicles": {"kind": "detection", "classes": ["car", "bus"], "slots": 2}})
    sources = [LabelSource.parse(f"vehicles={tmp_path / 'boxes.json'}")]
    ingest_to(tmp_path / "s", key, [tmp_path / "road.mp4"], sources, specs)
    store = EncryptedStore.open(tmp_path / "s", key)
    world = synth.WorldConfig(frames=16, height=32, width=32, fps=FPS)
    sample = ClipDataset(store, world, tasks=specs)[0]
    classes, boxes = sample["targets"]["vehicles.classes"], sample["targets"]["vehicles"]
    assert classes[4].tolist() == [1, -1]  # frame 4 is at 0.5 s: one bus, one empty slot
    assert boxes[4, 0].tolist() == pytest.approx([0.25, 0.25, 0.5, 0.5])
    others = [t for t in range(16) if t != 4]
    assert (classes[others] == UNKNOWN_BOX).all()  # nobody annotated them: no loss, no score


def test_subtitles_feed_the_text_modality_and_a_caption_task(tmp_path, key) -> None:
    (tmp_path / "talk.mp4").write_bytes(class_clip("cartoon", 2))
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "talk.vtt").write_text(
        "WEBVTT\n\n00:00.000 --> 00:01.000\nhello <i>there</i>\n\n"
        "00:01.000 --> 00:02.000\nlook at this\n"
    )
    (tmp_path / "talk.srt").write_text("1\n00:00:00,000 --> 00:00:02,000\na red square moves\n")
    specs = task_specs({"describe": {"kind": "caption"}})
    sources = [
        LabelSource(tmp_path / "subs"),
        LabelSource.parse(f"describe={tmp_path / 'talk.srt'}"),
    ]
    ingest_to(tmp_path / "s", key, [tmp_path / "talk.mp4"], sources, specs)
    store = EncryptedStore.open(tmp_path / "s", key)
    assert store.labels("talk")["transcript_cues"] == [
        [0.0, 1.0, "hello there"],
        [1.0, 2.0, "look at this"],
    ]
    sample = ClipDataset(store, WORLD, tasks=specs)[0]
    assert bool(sample["modality_mask"][2]) and int((sample["text"] > 0).sum()) > 3
    assert bool(sample["target_mask"]["describe"])
    caption = sample["targets"]["describe"]
    assert caption[0] == 1 and (caption == 2).any()  # BOS ... EOS


def test_a_tone_at_a_known_time_lands_in_its_window(tmp_path, key) -> None:
    (tmp_path / "long.mp4").write_bytes(tone_clip(6.0, (3.0, 3.5)))
    summary = ingest_to(
        tmp_path / "s", key, [tmp_path / "long.mp4"], windows=WindowPlan(length=1.0)
    )
    assert summary.ingested[0]["windows"] == 6
    store = EncryptedStore.open(tmp_path / "s", key)
    items = window_ids(store, store.ids())
    assert items == [f"long#{k}" for k in range(6)]
    ds = ClipDataset(store, WORLD, ids=items, tasks=task_specs({"restoration": 1.0}))
    loud = [float(ds[k]["audio"].pow(2).mean().sqrt()) for k in range(6)]
    bright = [float(ds[k]["video"].mean()) for k in range(6)]
    assert max(range(6), key=loud.__getitem__) == 3 and loud[3] > 10 * max(loud[:3] + loud[4:])
    assert max(range(6), key=bright.__getitem__) == 3
    assert ds[3]["audio"].shape == (WORLD.audio_samples,)
    # Training draws one window per file: the file, not the window, is the privacy unit.
    one = OneWindowPerClip(ds, items, seed=0)
    assert len(one) == 1
    seen = {one[0]["clip_id"] for _ in range(6)}
    assert seen == set(items)


def test_a_long_file_stored_whole_is_read_in_aligned_windows(tmp_path, key) -> None:
    """Without --window, a file lasting more than two clip spans is cut by the loader into clip
    spans, so the tone and the bright frames land in the same item; a short file stays whole."""
    (tmp_path / "long.mp4").write_bytes(tone_clip(6.0, (4.0, 4.5)))
    (tmp_path / "short.mp4").write_bytes(tone_clip(1.5, (0.0, 0.5)))
    ingest_to(tmp_path / "s", key, [tmp_path / "long.mp4", tmp_path / "short.mp4"])
    store = EncryptedStore.open(tmp_path / "s", key)
    assert "windows" not in store.labels("long")
    assert window_ids(store, store.ids()) == ["long", "short"]  # no clip span: read whole
    items = window_ids(store, store.ids(), WORLD.clip_seconds)
    assert items == [f"long#{k}" for k in range(6)] + ["short"]
    ds = ClipDataset(store, WORLD, ids=items, tasks=task_specs({"restoration": 1.0}))
    loud = [float(ds[k]["audio"].pow(2).mean().sqrt()) for k in range(6)]
    bright = [float(ds[k]["video"].mean()) for k in range(6)]
    assert max(range(6), key=loud.__getitem__) == 4 == max(range(6), key=bright.__getitem__)
    assert loud[4] > 10 * max(loud[:4] + loud[5:])


def test_self_supervised_targets_and_missing_audio_need_no_labels(tmp_path, key) -> None:
    (tmp_path / "quiet.mp4").write_bytes(class_clip("street", 3, frames=16, audio=False))
    specs = task_specs({"restoration": 1.0, "next_frame": 1.0})
    ingest_to(tmp_path / "s", key, [tmp_path / "quiet.mp4"])
    store = EncryptedStore.open(tmp_path / "s", key)
    ds = ClipDataset(store, WORLD, tasks=specs)
    sample = ds[0]
    assert sample["target_mask"]["restoration"] and sample["target_mask"]["next_frame"]
    assert sample["video"].shape[0] == WORLD.frames  # the future frames are not input
    assert sample["targets"]["next_frames"].shape == (4, 3, 32, 32)
    assert not bool(sample["modality_mask"][1])  # no audio track: the audio is masked off
    again = ds[0]
    assert torch.equal(sample["video"], again["video"])  # the same degradation every time
    model = create_model(tiny(tasks={"restoration": 1.0, "next_frame": 1.0}))
    batch = collate([sample])
    total, _ = model.loss(model(batch), batch)
    assert torch.isfinite(total)


def test_x2_super_resolution_input_keeps_only_half_resolution_detail() -> None:

    checker = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2).float()
    fine = checker.expand(2, 3, 16, 16).clone()  # detail at the full resolution only
    assert float(degrade(fine, "sr2", np.random.default_rng(0)).std()) < 0.01
    ramp = torch.linspace(0, 1, 16).expand(2, 3, 16, 16).clone()  # survives a x2 downscale
    assert torch.allclose(degrade(ramp, "sr2", np.random.default_rng(0)), ramp, atol=0.05)


def _bad(tmp_path: Path, key: FernetKey, sources, specs=None, windows=None) -> str:
    before = tree_digest(tmp_path / "s")
    with pytest.raises(UsageError) as err:
        ingest_to(tmp_path / "s", key, [tmp_path / "in"], sources, specs, windows)
    assert tree_digest(tmp_path / "s") == before  # nothing half-ingested
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("existing", [False, True])
def test_bad_labels_and_windows_are_refused_before_the_store_changes(
    tmp_path, key, existing
) -> None:
    write_class_videos(tmp_path / "in", per_class=1)
    if existing:
        (tmp_path / "old").mkdir()
        (tmp_path / "old" / "old.mp4").write_bytes(class_clip("street", 9))
        ingest_to(tmp_path / "s", key, [tmp_path / "old"])
    specs = task_specs(TASKS | {"boxes": {"kind": "detection", "classes": ["car"]}})
    unknown = _labels_csv(tmp_path / "a.csv", ["nobody.mp4,cartoon,,3,"])
    assert "a.csv: entry 'nobody.mp4' names no video" in _bad(
        tmp_path, key, [LabelSource(unknown)], specs
    )
    undeclared = _labels_csv(tmp_path / "b.csv", ["cartoon-00.mp4,anime,,3,"])
    msg = _bad(tmp_path, key, [LabelSource(undeclared)], specs)
    assert "b.csv: line 2 (cartoon-00.mp4)" in msg and "'anime' is not a class" in msg
    coco = {
        "images": [
            {"id": 3, "video": "cartoon-00.mp4", "timestamp": 9.0, "width": 32, "height": 32}
        ],
        "annotations": [{"id": 1, "image_id": 3, "category_id": 1, "bbox": [1, 1, 4, 4]}],
        "categories": [{"id": 1, "name": "car"}],
    }
    (tmp_path / "c.json").write_text(json.dumps(coco))
    msg = _bad(tmp_path, key, [LabelSource.parse(f"boxes={tmp_path / 'c.json'}")], specs)
    assert "c.json: COCO image id 3" in msg and "matches no frame" in msg
    (tmp_path / "cartoon-00.vtt").write_text("WEBVTT\n\n00:00.000 --> 00:01.00\nhi\n")
    msg = _bad(tmp_path, key, [LabelSource(tmp_path / "cartoon-00.vtt")], specs)
    assert "cartoon-00.vtt:3:" in msg
    msg = _bad(tmp_path, key, None, specs, WindowPlan(length=60.0))
    assert "window length 60 s is longer than the file" in msg and ".mp4" in msg


def test_window_plan_items_never_collide_with_clip_ids(tmp_path, key) -> None:
    (tmp_path / "a#1.mp4").write_bytes(class_clip("cartoon", 4))
    summary = ingest_to(tmp_path / "s", key, [tmp_path / "a#1.mp4"])
    assert summary.ingested[0]["clip_id"] == "a_1"
    assert WORLD.sample_rate == RATE


def test_windows_of_a_video_are_also_scored_as_one_video(tmp_path, key) -> None:
    folder = tmp_path / "in"
    write_class_videos(folder, per_class=2, frames=24)  # 3 s each: 3 windows of 1 s
    rows = [f"{p.name},{p.stem.split('-')[0]}" for p in sorted(folder.iterdir())]
    (tmp_path / "l.csv").write_text("file,scene\n" + "\n".join(rows) + "\n")
    tasks = {"scene": TASKS["scene"]}
    specs = task_specs(tasks)
    plan = WindowPlan(length=1.0)
    ingest_to(tmp_path / "s", key, [folder], [LabelSource(tmp_path / "l.csv")], specs, plan)
    store = EncryptedStore.open(tmp_path / "s", key)
    items = window_ids(store, store.ids())
    assert len(items) == 12
    ds = ClipDataset(store, WORLD, ids=items, tasks=specs)
    model = create_model(tiny(tasks=tasks))
    scores = score(model, in_order(ds, 4), fit_baselines(specs, in_order(ds, 4)), bootstrap=0)
    assert {"accuracy", "video_accuracy"} <= set(scores.metrics["scene"])
    assert scores.baselines["scene"]["video_accuracy"] == 0.5  # 2 of 4 videos are the majority
    assert scores.margins["scene"]["video_accuracy"]["higher_is_better"] is True


def test_every_annotated_kind_reaches_its_targets(tmp_path, key) -> None:
    """Masks and keypoints from COCO, QA pairs and frame scores from JSON: each lands on the
    frames (or clip) it names, in the shapes its head reads."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "park.mp4").write_bytes(class_clip("cartoon", 5, frames=16))
    image = {"id": 1, "video": "park.mp4", "timestamp": 0.25, "width": 32, "height": 32}
    coco = {
        "images": [image],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": [[0, 0, 16, 0, 16, 16, 0, 16]],
                "keypoints": [8, 8, 2, 24, 24, 1, 0, 0, 0],
                "num_keypoints": 2,
                "bbox": [0, 0, 16, 16],
            }
        ],
        "categories": [{"id": 1, "name": "dog", "keypoints": ["nose", "tail", "paw"]}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    (tmp_path / "qa.json").write_text(
        json.dumps({"park.mp4": [{"question": "is there a dog", "answer": "yes"}]})
    )
    (tmp_path / "scores.json").write_text(json.dumps({"park": [[0.0, 0.2], [1.0, 0.9]]}))
    tasks = {
        "masks": {"kind": "segmentation", "classes": ["dog"]},
        "pose": {"kind": "keypoints", "classes": ["nose", "tail", "paw"]},
        "ask": {"kind": "qa", "classes": ["yes", "no"]},
        "highlights": {"kind": "frame_scores"},
    }
    specs = task_specs(tasks)
    sources = [
        LabelSource(tmp_path / "coco.json"),
        LabelSource.parse(f"ask={tmp_path / 'qa.json'}"),
        LabelSource.parse(f"highlights={tmp_path / 'scores.json'}"),
    ]
    ingest_to(tmp_path / "s", key, [tmp_path / "in"], sources, specs)
    store = EncryptedStore.open(tmp_path / "s", key)
    world = synth.WorldConfig(frames=16, height=32, width=32, fps=FPS)
    sample = ClipDataset(store, world, tasks=specs)[0]
    t = sample["targets"]
    assert all(bool(sample["target_mask"][name]) for name in specs)
    seg = t["masks"]
    assert (seg[2, :15, :15] == 1).all() and (seg[2, 17:, 17:] == 0).all()  # frame 2 = 0.25 s
    assert (seg[3] == -1).all()  # not annotated: not scored
    assert t["pose.visible"][2].tolist() == [True, True, False]
    assert t["pose"][2, 0].tolist() == pytest.approx([0.25, 0.25])
    assert not t["pose.visible"][3].any()
    assert t["ask.answers"][0] == 0 and (t["ask.answers"][1:] == -1).all()
    assert int((t["ask"][0] > 0).sum()) > 0  # the question, tokenized
    scores = t["highlights"]
    assert scores[0] == pytest.approx(0.2) and scores[8] == pytest.approx(0.9)
    assert scores[1] == -1.0  # no score given near 0.125 s
    batch = collate([sample])
    model = create_model(tiny(tasks=tasks))
    total, per_task = model.loss(model(batch), batch)
    assert torch.isfinite(total) and set(per_task) == set(tasks)


def test_a_stored_id_ending_in_hash_digits_is_a_whole_clip(tmp_path, key) -> None:
    """Stores written before ids were kept free of '#' hold ids like 'clip#1': they read as the
    whole clip, not as window 1 of a clip 'clip' that does not exist."""
    store = EncryptedStore.create(tmp_path / "s", key)
    store.put("old#1", class_clip("street", 2), {"scene": "street"})
    specs = task_specs({"scene": TASKS["scene"]})
    assert window_ids(store, store.ids()) == ["old#1"]
    sample = ClipDataset(store, WORLD, tasks=specs)[0]
    assert sample["clip_id"] == "old#1" and int(sample["targets"]["scene"]) == 1
