"""Augmentations keep labels aligned with the pixels they describe."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from veilfed.augment import AUGMENTATIONS, build_augmentations
from veilfed.augment.video import apply_spatial
from veilfed.data.schema import ACTIONS, ANSWERS, KEYPOINTS, MAX_OBJECTS
from veilfed.data.text import PAD, Tokenizer
from veilfed.errors import UsageError

T, H, W, OBJ = 3, 32, 40, 2  # OBJ: segmentation label of the object (class 1)
X1, Y1, X2, Y2 = 6, 4, 16, 12
SPATIAL = ["hflip", "vflip", "random_resized_crop", "scale", "rotation"]


def make_sample(action: str = "left") -> dict:
    video = torch.full((T, 3, H, W), 0.1)
    video[:, :, Y1:Y2, X1:X2] = 0.9
    seg = torch.zeros(T, H, W, dtype=torch.long)
    seg[:, Y1:Y2, X1:X2] = OBJ
    boxes = torch.zeros(T, MAX_OBJECTS, 4)
    boxes[:, 0] = torch.tensor([X1 / W, Y1 / H, X2 / W, Y2 / H])
    classes = torch.full((T, MAX_OBJECTS), -1)
    classes[:, 0] = OBJ - 1
    kp = torch.tensor([(X1 + X2) / 2 / W, (Y1 + Y2) / 2 / H]).repeat(T, len(KEYPOINTS), 1)
    tok = Tokenizer()
    return {
        "clip_id": "c0",
        "video": video,
        "audio": torch.sin(torch.arange(16000) / 5.0) * 0.5,
        "text": torch.tensor(tok.encode("the square moves left", 8)),
        "modality_mask": torch.tensor([True, True, True]),
        "targets": {
            "action": torch.tensor(ACTIONS.index(action)),
            "boxes": boxes,
            "box_classes": classes,
            "segmentation": seg,
            "keypoints": kp,
            "keypoint_visible": torch.ones(T, len(KEYPOINTS), dtype=torch.bool),
            "caption": torch.tensor(tok.encode("a square moves left", 8, bos_eos=True)),
            "answers": torch.tensor([ANSWERS.index("red"), ANSWERS.index(action)]),
            "clean": video.clone(),
            "next_frames": video[:2].clone(),
        },
    }


def check_aligned(s: dict) -> None:
    tg = s["targets"]
    for t in range(T):
        ys, xs = torch.nonzero(tg["segmentation"][t] == OBJ, as_tuple=True)
        assert ys.numel() > 0, "object still in view for these transforms"
        x1, y1, x2, y2 = (tg["boxes"][t, 0] * torch.tensor([W, H, W, H])).tolist()
        # the box covers every object pixel (1 px tolerance for resampling)...
        assert xs.min() >= x1 - 1 and xs.max() + 1 <= x2 + 1
        assert ys.min() >= y1 - 1 and ys.max() + 1 <= y2 + 1
        # ...and is not much bigger than the object's hull (rotated hulls grow a little)
        hull = (xs.max() + 1 - xs.min()) * (ys.max() + 1 - ys.min())
        assert (x2 - x1) * (y2 - y1) <= 2.0 * hull + 4
        assert tg["box_classes"][t, 0] == OBJ - 1 and (tg["box_classes"][t, 1:] == -1).all()
        # the frame's bright pixels are the mask's pixels
        bright = s["video"][t].mean(0) > 0.5
        agree = (bright == (tg["segmentation"][t] == OBJ)).float().mean()
        assert agree > 0.95
        # the keypoint at the object's centre still lands on the object
        kx, ky = (tg["keypoints"][t, 0] * torch.tensor([W, H])).long().tolist()
        assert tg["keypoint_visible"][t, 0]
        assert tg["segmentation"][t, min(ky, H - 1), min(kx, W - 1)] == OBJ
    # all frames got the same parameters and the pixel targets followed the input
    assert torch.equal(s["video"][0], s["video"][-1])
    assert torch.allclose(tg["clean"], s["video"])
    assert torch.allclose(tg["next_frames"], s["video"][:2])


@pytest.mark.parametrize("name", SPATIAL)
def test_spatial_augmentations_keep_labels_aligned(name: str) -> None:
    kwargs = {"scale": (0.5, 1.0)} if name == "random_resized_crop" else {}
    aug = AUGMENTATIONS.build(name, p=1.0, **kwargs)
    for seed in range(4):
        torch.manual_seed(seed)
        original = make_sample()
        out = aug(original)
        assert out["video"].shape == original["video"].shape
        if name == "random_resized_crop" and not (out["targets"]["segmentation"] == OBJ).any():
            continue  # the crop missed the object: covered by the vanish test
        check_aligned(out)
        labels = torch.unique(out["targets"]["segmentation"]).tolist()
        assert set(labels) <= {0, OBJ}  # masks resampled with nearest, never blended
        assert torch.equal(original["video"], make_sample()["video"])  # input not modified


def test_probability_zero_is_identity() -> None:
    s = make_sample()
    assert build_augmentations([{"name": n, "p": 0.0} for n in AUGMENTATIONS.names()])(s) is s


def test_colour_jitter_applies_the_same_change_to_targets() -> None:
    torch.manual_seed(0)
    s = make_sample()
    out = AUGMENTATIONS.build("color_jitter", p=1.0, brightness=0.5)(s)
    assert not torch.allclose(out["video"], s["video"])
    assert torch.allclose(out["targets"]["clean"], out["video"])
    assert torch.equal(out["targets"]["segmentation"], s["targets"]["segmentation"])


def test_object_cropped_away_vanishes_and_keypoints_turn_invisible() -> None:
    s = make_sample()
    crop = v2.Compose([v2.CenterCrop((8, 8)), v2.Resize((H, W))])
    out = apply_spatial(s, crop)
    assert (out["targets"]["box_classes"] == -1).all()
    assert (out["targets"]["boxes"] == 0).all()
    assert not out["targets"]["keypoint_visible"].any()
    assert out["video"].shape == s["video"].shape


def test_partially_cropped_box_is_clipped_to_the_frame() -> None:
    s = make_sample()
    crop = v2.Compose([v2.CenterCrop((16, 20)), v2.Resize((H, W))])  # keeps x 10..30, y 8..24
    out = apply_spatial(s, crop)
    box = out["targets"]["boxes"][0, 0]
    assert out["targets"]["box_classes"][0, 0] == OBJ - 1
    assert box.min() >= 0 and box[0] == 0 and box[1] == 0  # clipped at the top-left corner
    assert box[2] == pytest.approx((X2 - 10) / 20) and box[3] == pytest.approx((Y2 - 8) / 16)


def test_flips_relabel_directions() -> None:
    tok = Tokenizer()
    left, right = tok.encode("left", 1)[0], tok.encode("right", 1)[0]
    s = make_sample("left")
    s["targets"]["keypoints"][:, KEYPOINTS.index("left_hand")] = torch.tensor([0.2, 0.5])
    out = AUGMENTATIONS.build("hflip", p=1.0)(s)
    tg = out["targets"]
    assert tg["action"] == ACTIONS.index("right")
    assert tg["answers"].tolist() == [ANSWERS.index("red"), ANSWERS.index("right")]
    assert right in out["text"].tolist() and left not in out["text"].tolist()
    assert right in tg["caption"].tolist() and left not in tg["caption"].tolist()
    # the hand that was on the left is now on the right, and is called right_hand
    assert tg["keypoints"][0, KEYPOINTS.index("right_hand")].tolist() == pytest.approx([0.8, 0.5])
    up = AUGMENTATIONS.build("vflip", p=1.0)(make_sample("up"))
    assert up["targets"]["action"] == ACTIONS.index("down")
    assert AUGMENTATIONS.build("vflip", p=1.0)(make_sample("left"))["targets"]["action"] == 1


def test_audio_augmentations() -> None:
    torch.manual_seed(0)
    s = make_sample()
    gain = AUGMENTATIONS.build("audio_gain", p=1.0, min_db=-6.0, max_db=-6.0)(s)
    assert torch.allclose(gain["audio"], s["audio"] * 10 ** (-6 / 20))
    noisy = AUGMENTATIONS.build("audio_noise", p=1.0, min_snr_db=10.0, max_snr_db=10.0)(s)
    snr = s["audio"].pow(2).mean() / (noisy["audio"] - s["audio"]).pow(2).mean()
    assert 10**0.9 < float(snr) < 10**1.1
    shifted = AUGMENTATIONS.build("audio_shift", p=1.0, max_seconds=0.05)(s)["audio"]
    lag = int(torch.nonzero(torch.isclose(shifted, s["audio"][100]), as_tuple=True)[0][0]) - 100
    assert abs(lag) <= 800
    masked = AUGMENTATIONS.build("time_mask", p=1.0, max_seconds=0.1, masks=2)(s)["audio"]
    assert (masked == 0).sum() > (s["audio"] == 0).sum()
    # a 1 kHz tone inside the stop band disappears, a 6 kHz one outside it stays
    t = torch.arange(16000) / 16000
    tone = 0.3 * torch.sin(2 * torch.pi * 1000 * t) + 0.3 * torch.sin(2 * torch.pi * 6000 * t)
    fm = AUGMENTATIONS.build("freq_mask", p=1.0, max_hz=3000.0)
    for seed in range(20):
        torch.manual_seed(seed)
        spec = torch.fft.rfft(fm({**s, "audio": tone})["audio"]).abs()
        if spec[1000] < 1e-3 * torch.fft.rfft(tone).abs()[1000]:
            assert spec[6000] > 100
            break
    else:
        pytest.fail("the band-stop never covered 1 kHz")
    silent = {**s, "audio": torch.zeros(16000), "modality_mask": torch.tensor([True, False, True])}
    assert (AUGMENTATIONS.build("audio_noise", p=1.0)(silent)["audio"] == 0).all()


def test_token_dropout() -> None:
    s = make_sample()
    out = AUGMENTATIONS.build("token_dropout", p=1.0, rate=1.0)(s)
    assert (out["text"] == PAD).all() and (s["text"] != PAD).any()
    assert torch.equal(out["targets"]["caption"], s["targets"]["caption"])
    missing = {**s, "modality_mask": torch.tensor([True, True, False])}
    assert torch.equal(
        AUGMENTATIONS.build("token_dropout", p=1.0, rate=1.0)(missing)["text"], s["text"]
    )


def test_build_from_config_and_errors() -> None:
    aug = build_augmentations(["hflip", {"name": "rotation", "degrees": 5, "p": 1.0}])
    assert [type(t).__name__ for t in aug.transforms] == ["HorizontalFlip", "RandomRotation"]
    check_aligned(aug(make_sample()))
    with pytest.raises(UsageError, match="unknown augmentation 'blur'; valid: audio_gain"):
        build_augmentations(["blur"])
    with pytest.raises(UsageError, match="bad arguments"):
        build_augmentations([{"name": "hflip", "angle": 3}])
    with pytest.raises(UsageError, match="so direction labels stay true"):
        build_augmentations([{"name": "rotation", "degrees": 90}])
    with pytest.raises(UsageError, match="'name'"):
        build_augmentations([{"degrees": 3}])
