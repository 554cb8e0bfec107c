"""Annotation files (WebVTT, SRT, COCO, QA, frame scores) into per-video task values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from veilfed.data.annotations import (
    TRANSCRIPT,
    read_coco,
    read_frame_scores,
    read_qa,
    read_subtitles,
    subtitles_dir,
)
from veilfed.data.coco_shapes import string_counts
from veilfed.errors import UsageError
from veilfed.tasks import task_spec

VTT = """\
WEBVTT - demo captions
Kind: captions

NOTE a comment
spanning two lines

STYLE
::cue { color: lime }

intro
00:00:01.250 --> 00:00:03.000 align:start position:10%
<v Ann>Hello <i>there</i></v>
second line &amp; more

01:02.500 --> 01:04.000
<c.loud>Bye</c>
"""

SRT = """\
1
00:00:00,500 --> 00:00:02,000
<i>First</i> cue

2
01:00:00,000 --> 01:00:01,250
Second
cue
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_vtt_round_trips(tmp_path: Path) -> None:
    cues = read_subtitles(write(tmp_path / "clip.vtt", VTT))
    assert cues == [
        (1.25, 3.0, "Hello there second line & more"),
        (62.5, 64.0, "Bye"),
    ]


def test_srt_round_trips(tmp_path: Path) -> None:
    cues = read_subtitles(write(tmp_path / "clip.srt", SRT.replace("\n", "\r\n")))
    assert cues == [(0.5, 2.0, "First cue"), (3600.0, 3601.25, "Second cue")]


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        (
            "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nok\n\n00:01.0 --> 00:02.000\nbad\n",
            6,
            "not a cue timing",
        ),
        ("WEBVTT\n\nid\n00:00:03.000 --> 00:00:02.000\nbackwards\n", 4, "not after its start"),
        ("WEBVTT\n\n00:00:01.000 --> 00:00:02.000\n<i></i>\n", 3, "no text"),
        ("WEBVTT\n\n00:00:01.000 --> 00:00:02.000\n", 3, "no text"),
        ("captions\n\n00:00:01.000 --> 00:00:02.000\nhi\n", 1, "WEBVTT"),
    ],
)
def test_bad_vtt_names_the_line(tmp_path: Path, text: str, line: int, what: str) -> None:
    path = write(tmp_path / "bad.vtt", text)
    with pytest.raises(UsageError, match=what) as err:
        read_subtitles(path)
    assert str(err.value).startswith(f"{path}:{line}: ")
    assert "\n" not in str(err.value)


def test_subtitles_dir(tmp_path: Path) -> None:
    write(tmp_path / "a.vtt", VTT)
    write(tmp_path / "b.srt", SRT)
    write(tmp_path / "notes.txt", "ignored")
    out = subtitles_dir(tmp_path, TRANSCRIPT)
    assert sorted(out) == ["a", "b"]
    assert out["b"] == {TRANSCRIPT: [[0.5, 2.0, "First cue"], [3600.0, 3601.25, "Second cue"]]}
    json.dumps(out)
    caption = task_spec("caption", {"kind": "caption"})
    assert set(subtitles_dir(tmp_path, caption)["a"]) == {"caption"}
    write(tmp_path / "a.srt", SRT)
    with pytest.raises(UsageError, match="same video stem"):
        subtitles_dir(tmp_path, TRANSCRIPT)


def specs() -> dict:
    return {
        "objects": task_spec("objects", {"kind": "detection", "classes": ["person", "car"]}),
        "parts": task_spec("parts", {"kind": "segmentation", "classes": ["person", "car"]}),
        "pose": task_spec("pose", {"kind": "keypoints", "classes": ["nose", "tail"]}),
        "scene": task_spec("scene", {"kind": "classification", "classes": ["a", "b"]}),
    }


def coco(**changes) -> dict:
    """Two frames of a.mp4 (one by timestamp, one by frame index) and one of b.mp4 by file name."""
    square = np.zeros((40, 100), np.uint8, order="F")
    square[10:20, 30:50] = 1  # 200 pixels
    compressed = {"size": [40, 100], "counts": mask_utils.encode(square)["counts"].decode()}
    uncompressed = {"size": [40, 100], "counts": [400, 30, 3570]}  # column-major: rows 0-29 of x=10
    data = {
        "images": [
            {"id": 1, "video": "a.mp4", "timestamp": 0.5, "width": 100, "height": 40},
            {"id": 2, "video": "a.mp4", "frame_index": 10, "width": 100, "height": 40},
            {"id": 3, "file_name": "b.mp4/000004.jpg", "width": 100, "height": 40},
        ],
        "categories": [
            {"id": 1, "name": "person", "keypoints": ["tail", "ear", "nose"]},
            {"id": 2, "name": "car"},
        ],
        "annotations": [
            {
                "id": 11,
                "image_id": 1,
                "category_id": 2,
                "bbox": [10, 4, 20, 8],
                "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]],
                "iscrowd": 0,
            },
            {
                "id": 12,
                "image_id": 1,
                "category_id": 1,
                "bbox": [30, 10, 20, 10],
                "segmentation": compressed,
                "iscrowd": 0,
                "keypoints": [50, 20, 2, 0, 0, 0, 25, 10, 1],
            },
            {
                "id": 13,
                "image_id": 1,
                "category_id": 1,
                "bbox": [0, 0, 5, 5],
                "keypoints": [1, 1, 2, 1, 1, 2, 1, 1, 2],
            },
            {
                "id": 14,
                "image_id": 2,
                "category_id": 1,
                "bbox": [10, 0, 1, 30],
                "segmentation": uncompressed,
                "iscrowd": 1,
            },
        ],
    }
    data.update(changes)
    return data


def decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools decode on numpy 2
def test_coco_round_trips(tmp_path: Path) -> None:
    path = write(tmp_path / "coco.json", json.dumps(coco()))
    out = read_coco(path, specs(), durations={"a": 3.0}, fps={"a.mp4": 4.0, "b.mp4": 8.0})
    json.dumps(out)
    assert sorted(out) == ["a.mp4", "b.mp4"]
    a = out["a.mp4"]
    assert set(a) == {"objects", "parts", "pose"}
    det = a["objects"]["frames"]
    assert [f["t"] for f in det] == [0.5, 2.5]
    assert det[0]["classes"] == ["car", "person", "person"]
    assert det[0]["boxes"][:2] == [[0.1, 0.1, 0.3, 0.3], [0.3, 0.25, 0.5, 0.5]]
    assert det[1] == {"t": 2.5, "boxes": [], "classes": []}  # crowd boxes are skipped
    masks = a["parts"]["frames"][0]["masks"]
    assert [(m["class"], m["crowd"]) for m in masks] == [("car", False), ("person", False)]
    polygon, square = (decode(m["rle"]) for m in masks)
    assert polygon.shape == (40, 100) and polygon[:10, :10].all() and polygon.sum() <= 121
    assert square.sum() == 200 and square[10:20, 30:50].all()
    crowd = a["parts"]["frames"][1]["masks"][0]
    assert crowd["class"] == "person" and crowd["crowd"]
    assert decode(crowd["rle"]).sum() == 30 and decode(crowd["rle"])[:30, 10].all()
    # First figure wins; task order (nose, tail) picked from the category's names.
    assert a["pose"]["frames"] == [{"t": 0.5, "points": [[0.25, 0.25, 1], [0.5, 0.5, 1]]}]
    b = out["b.mp4"]
    assert b["objects"]["frames"] == [{"t": 0.5, "boxes": [], "classes": []}]
    assert b["pose"]["frames"] == []


def test_coco_routes_to_named_task(tmp_path: Path) -> None:
    path = write(tmp_path / "coco.json", json.dumps(coco()))
    out = read_coco(path, specs(), fps={"a": 4, "b": 8}, task="objects")
    assert set(out["a.mp4"]) == {"objects"}
    only_seg = {k: v for k, v in specs().items() if k != "objects"}
    out = read_coco(path, only_seg, fps=lambda video: 4.0)
    assert set(out["a.mp4"]) == {"parts", "pose"}  # boxes skipped: no detection task


@pytest.mark.parametrize(
    ("change", "declared", "what"),
    [
        (
            {"categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "truck"}]},
            None,
            r"annotation id 11: 'truck' is not a class of task 'objects'; declare it in "
            r"\[model.tasks.objects\] classes",
        ),
        (
            {"images": [{"id": 1, "video": "a.mp4", "timestamp": 3.5, "width": 100, "height": 40}]},
            None,
            r"COCO image id 1 \(a.mp4 at 3.50 s\) matches no frame: the video is 3.00 s long",
        ),
        (
            {"images": [{"id": 1, "video": "c.mp4", "frame_index": 3, "width": 100, "height": 40}]},
            None,
            "fps of c.mp4, which is unknown",
        ),
        ({"images": []}, None, "annotation id 11: image_id 1 is not in images"),
        (
            {"categories": [{"id": 1, "name": "person"}]},
            None,
            "annotation id 11: category_id 2 is not in categories",
        ),
        (
            {},
            {"scene": {"kind": "classification", "classes": ["a", "b"]}},
            "has boxes but no detection task is declared",
        ),
    ],
)
def test_coco_errors(tmp_path: Path, change: dict, declared: dict | None, what: str) -> None:
    data = coco(**change)
    if "images" in change:
        data["annotations"] = data["annotations"][:1]
    path = write(tmp_path / "coco.json", json.dumps(data))
    tasks = specs() if declared is None else {k: task_spec(k, v) for k, v in declared.items()}
    with pytest.raises(UsageError, match=what) as err:
        read_coco(path, tasks, durations={"a.mp4": 3.0}, fps={"a": 4, "b": 8})
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_coco_bad_bbox(tmp_path: Path) -> None:
    data = coco()
    data["annotations"][0]["bbox"] = [1, 1, 0, 5]
    path = write(tmp_path / "coco.json", json.dumps(data))
    with pytest.raises(UsageError, match="annotation id 11: bbox .* width and height > 0"):
        read_coco(path, specs(), fps={"a": 4, "b": 8})


def test_qa(tmp_path: Path) -> None:
    spec = task_spec("vqa", {"kind": "qa", "classes": ["yes", "no"]})
    by_video = {"a.mp4": [{"question": "Is it red? ", "answer": "yes"}]}
    out = read_qa(write(tmp_path / "qa.json", json.dumps(by_video)), spec)
    assert out == {"a.mp4": {"vqa": [{"question": "Is it red?", "answer": "yes"}]}}
    rows = [
        {"file": "a", "question": "q1", "answer": "no"},
        {"file": "b", "question": "q2", "answer": "yes"},
    ]
    out = read_qa(write(tmp_path / "qa2.json", json.dumps(rows)), spec)
    assert out["b"] == {"vqa": [{"question": "q2", "answer": "yes"}]}
    rows[1]["answer"] = "maybe"
    path = write(tmp_path / "qa3.json", json.dumps(rows))
    with pytest.raises(UsageError, match=r"entry 2: 'maybe' is not a class of task 'vqa'"):
        read_qa(path, spec)


def test_frame_scores(tmp_path: Path) -> None:
    spec = task_spec("highlight", {"kind": "frame_scores"})
    data = {"a.mp4": [[1.5, 0.25], [0.5, 1]], "b.mp4": {"fps": 4, "scores": [0, 0.5, 1]}}
    out = read_frame_scores(write(tmp_path / "s.json", json.dumps(data)), spec)
    assert out == {
        "a.mp4": {"highlight": [[0.5, 1.0], [1.5, 0.25]]},
        "b.mp4": {"highlight": [[0.0, 0.0], [0.25, 0.5], [0.5, 1.0]]},
    }
    path = write(tmp_path / "bad.json", json.dumps({"a.mp4": {"fps": 2, "scores": [0.5, 1.5]}}))
    with pytest.raises(UsageError, match=r"a.mp4 entry 2: score 1.5 is outside \[0, 1\]"):
        read_frame_scores(path, spec)


def _runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE of ``mask``: column-major run lengths, starting with zeros."""
    flat = mask.flatten(order="F")
    runs, value, n = [], 0, 0
    for pixel in flat:
        if pixel != value:
            runs.append(n)
            value, n = pixel, 0
        n += 1
    return runs + [n]


@pytest.mark.parametrize("seed", range(5))
def test_compressed_rle_strings_read_as_pycocotools_writes_them(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = np.asfortranarray((rng.random((37, 53)) < rng.uniform(0.05, 0.95)).astype(np.uint8))
    text = mask_utils.encode(mask)["counts"].decode()
    assert string_counts(text) == _runs(mask)


@pytest.mark.parametrize(
    "counts",
    [
        [400, 30, 9999],  # runs past the image: pycocotools would write past its buffer
        [400, 30],  # runs that stop short
        [-5, 4005],
        "!!!",  # not the RLE alphabet
        "Q",  # a run left unfinished (continuation bit set)
        {"a": 1},
    ],
)
def test_rle_counts_must_cover_the_image_exactly(tmp_path: Path, counts) -> None:
    data = coco()
    data["annotations"][3]["segmentation"] = {"size": [40, 100], "counts": counts}
    path = write(tmp_path / "coco.json", json.dumps(data))
    with pytest.raises(UsageError, match="annotation id 14: RLE counts must be run lengths"):
        read_coco(path, specs(), fps={"a": 4, "b": 8})


def test_an_overfilling_compressed_string_is_refused(tmp_path: Path) -> None:
    wide = np.asfortranarray(np.ones((40, 200), np.uint8))
    data = coco()
    text = mask_utils.encode(wide)["counts"].decode()
    data["annotations"][3]["segmentation"] = {"size": [40, 100], "counts": text}
    path = write(tmp_path / "coco.json", json.dumps(data))
    with pytest.raises(UsageError, match="cover the 40x100 image exactly"):
        read_coco(path, specs(), fps={"a": 4, "b": 8})


@pytest.mark.parametrize(
    ("section", "entry", "field", "value"),
    [
        ("images", 0, "id", [1]),
        ("annotations", 0, "image_id", {"id": 1}),
        ("annotations", 1, "category_id", [1]),
    ],
)
def test_a_field_of_the_wrong_json_type_names_its_entry(
    tmp_path: Path, section: str, entry: int, field: str, value
) -> None:
    data = coco()
    data[section][entry][field] = value
    path = write(tmp_path / "coco.json", json.dumps(data))
    with pytest.raises(UsageError) as err:
        read_coco(path, specs(), fps={"a": 4, "b": 8})
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert f"entry {entry + 1}" in message or "is not in" in message


def test_more_boxes_than_slots_is_refused_not_cut(tmp_path: Path) -> None:
    tasks = specs() | {
        "objects": task_spec(
            "objects", {"kind": "detection", "classes": ["person", "car"], "slots": 2}
        )
    }
    path = write(tmp_path / "coco.json", json.dumps(coco()))
    with pytest.raises(UsageError, match=r"a.mp4 at 0.50 s has 3 boxes, task 'objects' keeps 2"):
        read_coco(path, tasks, fps={"a": 4, "b": 8})
