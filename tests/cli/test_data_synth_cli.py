from __future__ import annotations

import json
import subprocess
import sys

import av

VEILFED = [sys.executable, "-m", "veilfed.cli.main"]


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*VEILFED, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_help_lists_command_groups():
    res = run("--help")
    assert res.returncode == 0
    assert "data" in res.stdout


def test_synth_writes_mp4_with_video_and_audio(tmp_path):
    out = tmp_path / "world"
    res = run(
        "data",
        "synth",
        "--out",
        str(out),
        "--clips",
        "6",
        "--frames",
        "8",
        "--size",
        "32",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["clips"] == 6 and summary["with_audio"] == 6
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["clips"]) == 6
    for entry in manifest["clips"]:
        with av.open(str(out / entry["video"])) as c:
            assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        labels = json.loads((out / entry["labels"]).read_text())
        assert labels["clip_id"] == entry["clip_id"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_synth_refuses_non_empty_out(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    res = run("data", "synth", "--out", str(tmp_path), "--clips", "2")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "not empty" in res.stderr
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_synth_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = run("data", "synth", "--out", str(blocker / "world"), "--clips", "2")
    assert res.returncode == 2 and "cannot write here" in res.stderr
    assert "Traceback" not in res.stderr


def test_synth_needs_exactly_one_target(tmp_path):
    res = run("data", "synth", "--clips", "2")
    assert res.returncode == 2 and "exactly one of --out" in res.stderr
