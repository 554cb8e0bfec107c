"""Augmentations on real synthetic-world samples: shapes survive collate, labels follow pixels."""

from __future__ import annotations

import torch

from veilfed.augment import build_augmentations
from veilfed.data.dataset import ClipDataset, MemorySource, collate
from veilfed.data.synth import WorldConfig

EVERYTHING = [
    {"name": n, "p": 1.0}
    for n in (
        "hflip",
        "random_resized_crop",
        "rotation",
        "color_jitter",
        "audio_gain",
        "audio_noise",
        "audio_shift",
        "time_mask",
        "freq_mask",
        "token_dropout",
    )
]


def test_all_augmentations_on_world_samples() -> None:
    world = WorldConfig(frames=4, height=32, width=32, next_frames=2, seed=3, p_degraded=0.0)
    plain = ClipDataset(MemorySource.world(world, 3), world)
    augmented = ClipDataset(
        MemorySource.world(world, 3), world, augment=build_augmentations(EVERYTHING)
    )
    torch.manual_seed(0)
    a, b = collate([plain[i] for i in range(3)]), collate([augmented[i] for i in range(3)])
    for key in ("video", "audio", "text"):
        assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype
    for key, value in a["targets"].items():
        assert b["targets"][key].shape == value.shape and b["targets"][key].dtype == value.dtype
    assert not torch.equal(a["video"], b["video"])
    tg = b["targets"]
    # undegraded clips: the restoration target followed the input exactly
    assert torch.allclose(tg["clean"], b["video"], atol=0.1)
    # every surviving box contains pixels of its class in the augmented mask
    h, w = world.height, world.width
    for i, t, o in torch.nonzero(tg["box_classes"] >= 0).tolist():
        x1, y1, x2, y2 = (tg["boxes"][i, t, o] * torch.tensor([w, h, w, h])).tolist()
        patch = tg["segmentation"][i, t, int(y1) : int(y2) + 1, int(x1) : int(x2) + 1]
        assert (patch == tg["box_classes"][i, t, o] + 1).any()
