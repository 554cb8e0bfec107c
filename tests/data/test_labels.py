"""Labels matched to videos and stored labels read back (veilfed.data.labels, .targets): a name
that fits two videos, a value of the wrong shape and a stored label of the wrong format are each
one line naming where, never a silent mislabel or a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from veilfed.data.labels import match, video_keys
from veilfed.data.targets import canonical, real_targets
from veilfed.data.text import Tokenizer
from veilfed.errors import UsageError
from veilfed.tasks import task_spec, task_specs

A, B = Path("a/clip.mp4"), Path("b/clip.mp4")


def test_a_name_shared_by_two_videos_is_refused_and_a_path_is_not() -> None:
    assert video_keys([A, B])["clip"] == [A, B] and video_keys([A, B])[str(A)] == [A]
    with pytest.raises(UsageError, match=r"labels.csv: entry 'clip' names 2 videos \(a/clip"):
        match({"clip": {"scene": "x"}}, {"clip": "labels.csv"}, [A, B])
    out = match({str(A): {"scene": "x"}, str(B): {"scene": "y"}}, {}, [A, B])
    assert out == {A: {"scene": "x"}, B: {"scene": "y"}}


def test_one_video_named_twice_for_one_task_is_refused() -> None:
    with pytest.raises(UsageError, match="task 'scene' is labelled twice"):
        match({"clip": {"scene": "x"}, "clip.mp4": {"scene": "y"}}, {}, [A])


@pytest.mark.parametrize("value", [3, 2.5, {"indoor": 1}, True])
def test_a_multilabel_value_must_be_names(value) -> None:
    tags = task_spec("tags", {"kind": "multilabel", "classes": ["indoor", "night"]})
    with pytest.raises(UsageError, match="expected class names as a list or 'a;b'"):
        canonical(tags, value, "l.csv: line 2")
    assert canonical(tags, "night;indoor", "x") == ["indoor", "night"]


@pytest.mark.parametrize(
    ("task", "stored"),
    [
        ({"kind": "detection", "classes": ["car"]}, {"frames": [{"t": 0.0, "boxes": 3}]}),
        ({"kind": "detection", "classes": ["car"]}, {"frames": [{"boxes": [[0, 0, 1, 1]]}]}),
        ({"kind": "keypoints", "classes": ["nose"]}, {"frames": [{"t": 0.0, "points": [1]}]}),
        ({"kind": "qa", "classes": ["yes"]}, [{"question": "why?"}]),
        ({"kind": "frame_scores"}, [[0.0]]),
    ],
)
def test_a_stored_label_of_the_wrong_format_names_the_clip_and_task(task, stored) -> None:
    specs = task_specs({"t": task})
    with pytest.raises(UsageError) as err:
        real_targets(specs, {"t": stored}, [0.0, 0.125], 8.0, 16, 16, Tokenizer(), where="clip-7")
    message = str(err.value)
    assert message.startswith("clip-7: task 't'") and "re-ingest" in message
    assert "\n" not in message
