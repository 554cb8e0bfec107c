from __future__ import annotations

import numpy as np
import pytest

from veilfed.data import schema, synth, synth_labels, synth_render
from veilfed.errors import UsageError


def test_generator_is_deterministic(tiny_world):
    a, b = synth.generate_clip(tiny_world, 3), synth.generate_clip(tiny_world, 3)
    assert a.labels == b.labels
    np.testing.assert_array_equal(a.video, b.video)
    np.testing.assert_array_equal(a.audio, b.audio)
    other = synth.generate_clip(synth.WorldConfig(**{**tiny_world.to_dict(), "seed": 8}), 3)
    assert other.labels != a.labels


def test_shapes(tiny_world, tiny_clips):
    for clip in tiny_clips:
        assert clip.video.shape == (8, 32, 32, 3) and clip.video.dtype == np.uint8
        assert clip.audio is not None and clip.audio.shape == (tiny_world.audio_samples,)


@pytest.mark.parametrize("index", range(12))
def test_label_consistency(tiny_world, index):
    labels = synth_labels.make_labels(tiny_world, index)
    n = tiny_world.frames + tiny_world.next_frames
    masks = synth_render.instance_masks(labels, 64, 64, range(n))
    for i, obj in enumerate(labels["objects"]):
        for t in range(n):
            x0, y0, x1, y1 = obj["boxes"][t]
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            ys, xs = np.nonzero(masks[t] == i + 1)
            if len(xs):  # visible pixels (pixel centres) lie inside the box
                assert ((xs + 0.5) / 64 >= x0 - 1e-6).all() and ((xs + 0.5) / 64 <= x1 + 1e-6).all()
                assert ((ys + 0.5) / 64 >= y0 - 1e-6).all() and ((ys + 0.5) / 64 <= y1 + 1e-6).all()
    # the main object is drawn on top, so it is visible in every frame
    assert all((masks[t] == 1).any() for t in range(n))
    kp = np.asarray(labels["keypoints"])
    assert kp.shape == (n, len(schema.KEYPOINTS), 2)
    assert ((kp > 0) & (kp < 1)).all()


def test_qa_answers_are_true(tiny_world):
    for index in range(30):
        labels = synth_labels.make_labels(tiny_world, index)
        answers = {q["type"]: q["answer"] for q in labels["qa"]}
        assert answers["color"] == labels["objects"][0]["color"]
        assert answers["count"] == str(len(labels["objects"]))
        assert answers["direction"] == schema.ACTIONS[labels["action"]]
        assert answers["forbidden"] == ("yes" if labels["moderation"] else "no")
        assert all(q["answer"] in schema.ANSWERS for q in labels["qa"])


def test_sentiment_needs_all_three_cues(tiny_world):
    labels = [synth_labels.make_labels(tiny_world, i) for i in range(300)]
    for lab in labels:
        total = sum(lab["sentiment_cues"].values())
        assert lab["sentiment"] == (0 if total < 0 else 1 if total == 0 else 2)
    # any single cue, read optimally, is far from perfect: fusion must matter
    for cue in ("palette", "pitch", "word"):
        best = 0
        for value in (-1, 0, 1):
            group = [lab["sentiment"] for lab in labels if lab["sentiment_cues"][cue] == value]
            best += max(np.bincount(group, minlength=3))
        assert best / len(labels) < 0.8


def test_moderation_and_quality(tiny_world):
    for index in range(40):
        lab = synth_labels.make_labels(tiny_world, index)
        assert lab["moderation"] == int(lab["forbidden"]["symbol"] or lab["forbidden"]["word"])
        if lab["forbidden"]["word"] and lab["modalities"]["text"]:
            assert schema.FORBIDDEN_WORD in lab["transcript"].split()
        assert lab["quality"] == pytest.approx(1 - 0.8 * lab["degradation_level"], abs=1e-4)
        assert (lab["degradation"] == "none") == (lab["degradation_level"] == 0)


def test_degraded_clip_differs_from_clean_target(tiny_world):
    for index in range(40):
        clip = synth.generate_clip(tiny_world, index)
        clean = synth_render.render(clip.labels, tiny_world.height, tiny_world.width)
        diff = np.abs(clip.video.astype(int) - clean.astype(int)).mean()
        if clip.labels["degradation"] == "none":
            assert diff == 0
        else:
            assert diff > 0.5


def test_audio_pitch_encodes_class(tiny_world):
    """The spectral peak of the audio sits at the class's pitch (within the contour range)."""
    cfg = synth.WorldConfig(**{**tiny_world.to_dict(), "audio_noise": 0.0})
    pitches = (220.0, 277.2, 349.2, 440.0)
    for index in range(12):
        clip = synth.generate_clip(cfg, index)
        spectrum = np.abs(np.fft.rfft(clip.audio))
        hz = np.fft.rfftfreq(len(clip.audio), 1 / cfg.sample_rate)
        tonal = hz < 1000  # the forbidden-word buzz sits at 1.2 kHz
        peak = hz[tonal][np.argmax(spectrum[tonal])]
        assert (
            abs(peak - pitches[clip.labels["object_class"]])
            < 0.15 * pitches[clip.labels["object_class"]]
        )


def test_missing_modalities_configurable():
    cfg = synth.WorldConfig(frames=4, height=16, width=16, p_missing_audio=1.0, p_missing_text=1.0)
    clip = synth.generate_clip(cfg, 0)
    assert clip.audio is None and clip.labels["transcript"] == ""
    assert clip.labels["modalities"] == {"video": True, "audio": False, "text": False}


@pytest.mark.parametrize(
    "field,value", [("sample_rate", 12345), ("height", 15), ("frames", 0), ("p_missing_audio", 1.5)]
)
def test_bad_world_config(field, value):
    with pytest.raises(UsageError, match=field.split("_")[0]):
        synth.WorldConfig(**{field: value})


def test_world_from_dict_rejects_unknown_field():
    with pytest.raises(UsageError, match="unknown field 'fps_typo'"):
        synth.WorldConfig.from_dict({"fps_typo": 3}, "exp.toml [world]")


def test_frames_of_a_steady_motion_are_equally_important() -> None:
    cfg = synth.WorldConfig(frames=16, height=32, width=32, seed=0)
    steady = [
        lab
        for lab in (synth_labels.make_labels(cfg, i) for i in range(60))
        if schema.ACTIONS[lab["action"]] in ("left", "right", "up", "down", "grow", "shrink")
        and not lab["forbidden"]["symbol"]
    ]
    assert steady
    for lab in steady:
        frames = lab["keyframes"]
        assert frames[0] == 0.1 and len(set(frames[1:])) == 1, frames
