"""`veilfed explain` on real encoded videos: an MP4 of a synthetic clip showing the forbidden
symbol (with its audio track and its transcript as a .vtt beside it), a saved model, the JSON
schema, the files an auditor opens, and each bad input as one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testkit.videos import tone_clip
from typer.testing import CliRunner

from veilfed.cli.main import app
from veilfed.config import parse_config
from veilfed.data.synth import WorldConfig
from veilfed.data.video import encode_mp4
from veilfed.explain.localise import clips
from veilfed.model import create_model
from veilfed.model.saved import save_dir

WORLD = {"frames": 8, "size": 32, "seed": 7}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("explain")
    table = {"world": WORLD, "model": {"dim": 16, "pixel_dim": 16}}
    table["model"]["tasks"] = {"action": 1.0, "moderation": 1.0, "detection": 1.0}
    cfg = parse_config(table, "explain")
    model = save_dir(root / "model", create_model(cfg), cfg)
    world = WorldConfig(frames=8, height=32, width=32, seed=7)
    clip = next(c for case, c in clips(world, 1) if case == "symbol")
    video = root / "symbol.mp4"
    video.write_bytes(encode_mp4(clip.video, clip.audio, world.fps))
    words = clip.labels["transcript"] or "a red x"
    video.with_suffix(".vtt").write_text(f"WEBVTT\n\n00:00.000 --> 00:01.000\n{words}\n")
    return root, model, video


def test_explain_writes_an_explanation_a_person_can_open(setup) -> None:
    root, model, video = setup
    out = root / "out"
    args = ["explain", str(model), str(video), "--task", "moderation", "--steps", "8"]
    res = CliRunner().invoke(app, [*args, "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["task"] == "moderation" and result["class"] == "flagged"
    assert result["method"] == "integrated_gradients" and result["window"] == 0
    assert len(result["video"]["frame_share"]) == 8
    assert sum(result["video"]["frame_share"]) == pytest.approx(1.0, abs=1e-3)
    assert sum(result["audio"]["time_share"]) == pytest.approx(1.0, abs=1e-3)
    assert result["text"]["tokens"] and set(result["ablation"]["without"]) == {
        "video",
        "audio",
        "text",
    }
    folder = out / "symbol-moderation"
    names = {Path(p).name for p in result["files"]}
    assert names == {
        "frames.png",
        "overlay.mp4",
        "modalities.png",
        "audio.png",
        "report.html",
        "explanation.json",
    }
    page = (folder / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "data:video/mp4;base64," in page
    assert (folder / "frames.png").read_bytes()[:4] == b"\x89PNG"
    res = CliRunner().invoke(app, [*args, "--out", str(out), "--method", "occlusion"])
    assert res.exit_code == 0, res.output
    assert (out / "symbol-moderation-2" / "report.html").is_file()  # never over the first
    assert "decided by:" in res.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "sentiment"], "--task 'sentiment': the model has no such task"),
        (["--task", "detection"], "--task 'detection' is a detection task"),
        (["--task", "action", "--method", "attention"], "--method attention: the model's fusion"),
        (["--task", "action", "--method", "saliency"], "--method 'saliency': use"),
        (["--task", "action", "--window", "3"], "symbol.mp4 has 1 window(s) of 1 s; give 0 to 0"),
        (["--task", "moderation", "--class", "ok"], "--class 'ok': 'moderation' has the classes"),
    ],
)
def test_bad_requests_are_one_line_and_exit_2(setup, extra, message) -> None:
    _, model, video = setup
    res = CliRunner().invoke(app, ["explain", str(model), str(video), *extra])
    assert res.exit_code == 2, res.output
    assert message in res.stderr and "Traceback" not in res.output


def test_a_file_that_is_not_a_video_is_one_line(setup, tmp_path: Path) -> None:
    _, model, _ = setup
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    res = CliRunner().invoke(app, ["explain", str(model), str(bad), "--task", "action"])
    assert res.exit_code == 2 and "notes.mp4" in res.stderr and "Traceback" not in res.output
    long = tmp_path / "long.mp4"  # 3.5 s: four windows of the model's 1 s
    long.write_bytes(tone_clip(3.5, (1.0, 1.5)))
    args = ["explain", str(model), str(long), "--task", "action", "--window", "2", "--json"]
    res = CliRunner().invoke(app, [*args, "--steps", "4"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["start"] == pytest.approx(2.0)
