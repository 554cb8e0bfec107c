from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from veilfed.data import schema
from veilfed.data.dataset import ClipDataset, MemorySource, collate
from veilfed.data.files import DirectorySource, write_world
from veilfed.data.text import Tokenizer


def _check_batch(batch, cfg, n):
    t, h, w = cfg.frames, cfg.height, cfg.width
    assert batch["video"].shape == (n, t, 3, h, w)
    assert batch["audio"].shape == (n, cfg.audio_samples)
    assert batch["text"].shape == (n, schema.MAX_TEXT_TOKENS)
    assert batch["modality_mask"].shape == (n, 3)
    tg = batch["targets"]
    assert tg["boxes"].shape == (n, t, schema.MAX_OBJECTS, 4)
    assert tg["segmentation"].shape == (n, t, h, w)
    assert tg["keypoints"].shape == (n, t, len(schema.KEYPOINTS), 2)
    assert tg["questions"].shape == (n, len(schema.QA_TYPES), schema.MAX_QUESTION_TOKENS)
    assert tg["clean"].shape == (n, t, 3, h, w)
    assert tg["next_frames"].shape == (n, cfg.next_frames, 3, h, w)
    assert set(batch["target_mask"]) == set(schema.TASKS)


def test_memory_and_files_give_the_same_targets(tmp_path, tiny_world):
    write_world(tiny_world, 4, tmp_path / "w")
    files = ClipDataset(DirectorySource(tmp_path / "w"), tiny_world)
    mem = ClipDataset(MemorySource.world(tiny_world, 4), tiny_world)
    a, b = collate([files[i] for i in range(4)]), collate([mem[i] for i in range(4)])
    _check_batch(a, tiny_world, 4)
    for key in ("action", "segmentation", "boxes", "clean", "caption", "answers"):
        assert torch.equal(a["targets"][key], b["targets"][key]), key
    # decoded video is close to the raw frames (lossy codec)
    assert (a["video"] - b["video"]).abs().mean() < 0.05


def test_segmentation_classes_match_objects(tiny_world):
    ds = ClipDataset(MemorySource.world(tiny_world, 6), tiny_world)
    for i in range(6):
        s, labels = ds[i], ds.labels(i)
        present = set(torch.unique(s["targets"]["segmentation"]).tolist()) - {0}
        assert present <= {o["class"] + 1 for o in labels["objects"]}
        assert labels["object_class"] + 1 in present
        assert s["targets"]["answers"][0] == schema.ANSWERS.index(labels["color"])


def test_dataloader_with_workers(tiny_world):
    ds = ClipDataset(MemorySource.world(tiny_world, 6, encode=True), tiny_world)
    # forkserver: a worker forked from this process could inherit a lock held by a decoder
    # thread an earlier test left behind (FFmpeg's threads are not fork-safe) and hang
    loader = DataLoader(
        ds, batch_size=3, collate_fn=collate, num_workers=2, multiprocessing_context="forkserver"
    )
    batches = list(loader)
    assert len(batches) == 2
    _check_batch(batches[0], tiny_world, 3)


def test_drop_modalities_masks_and_zeros(tiny_world):
    ds = ClipDataset(MemorySource.world(tiny_world, 2), tiny_world, drop_modalities=["audio"])
    s = ds[0]
    assert s["modality_mask"].tolist() == [True, False, True]
    assert not s["audio"].any()
    with pytest.raises(ValueError, match="unknown modality 'smell'"):
        ClipDataset(MemorySource.world(tiny_world, 1), tiny_world, drop_modalities=["smell"])


def test_unlabelled_clip_masks_targets(tiny_world, tiny_clips):
    clip = tiny_clips[0]
    src = MemorySource([clip])
    labels = {"clip_id": clip.clip_id, "transcript": "hello there", "action": 2}
    src._items[clip.clip_id] = (src._items[clip.clip_id][0], labels)
    s = ClipDataset(src, tiny_world)[0]
    assert s["target_mask"]["action"] and not s["target_mask"]["segmentation"]
    assert int(s["targets"]["action"]) == 2


def test_tokenizer_round_trip_and_byte_fallback():
    tok = Tokenizer()
    ids = tok.encode("a red circle says xylophone", 14)
    assert len(ids) == 14 and tok.decode(ids) == "a red circle says xylophone"
    fitted = Tokenizer.fit(["xylophone xylophone"])
    assert fitted.vocab_size == tok.vocab_size + 1
    assert fitted.encode("xylophone", 3)[1:] == [0, 0]
    cap = tok.encode("a red circle", 5, bos_eos=True)
    assert cap[0] == 1 and 2 in cap
