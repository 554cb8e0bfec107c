"""Data that cannot be lost: concurrent writers, re-ingest, outputs over existing files, bad input.

Every case runs the real console script on a real Fernet store holding real encoded video made by
``veilfed data synth``; each case is an attack that would lose or duplicate data.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from veilfed.crypto.keys import read_key_file
from veilfed.data.lock import TIMEOUT_ENV, writer_lock
from veilfed.data.store import EncryptedStore

VEILFED = str(Path(sys.executable).parent / "veilfed")
TINY = Path(__file__).resolve().parents[2] / "experiments" / "tiny.toml"


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VEILFED, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def start(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [VEILFED, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def error_line(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """Failed with ``code`` and one ``error:`` line (the last on stderr), no traceback."""
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.endswith(errors[0] + "\n"), proc.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def clips_in(store: Path, key: Path) -> list[str]:
    return EncryptedStore.open(store, read_key_file(key)).ids()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A key and two disjoint sets of real MP4s (different world seeds)."""
    root = tmp_path_factory.mktemp("safety")
    key = root / "owner.key"
    assert run("keys", "new", "--out", key).returncode == 0
    for name, seed in (("a", "1"), ("b", "2")):
        proc = run(
            "data",
            "synth",
            "--out",
            root / name,
            "--clips",
            "8",
            "--frames",
            "4",
            "--size",
            "16",
            "--seed",
            seed,
        )
        assert proc.returncode == 0, proc.stderr
    return {"root": root, "key": key, "a": root / "a", "b": root / "b"}


def test_two_concurrent_ingests_both_land_nothing_swept(videos, tmp_path) -> None:
    store, key = tmp_path / "store", videos["key"]
    procs = [
        start("data", "ingest", videos[s], "--store", store, "--key-file", key, "--json")
        for s in ("a", "b")
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
        assert json.loads(out)["ingested"] == 8
    assert len(clips_in(store, key)) == 16
    assert len(list((store / "clips").iterdir())) == 16  # no clip file orphaned
    verify = run("data", "verify", "--store", store, "--key-file", key, "--json")
    assert verify.returncode == 0 and json.loads(verify.stdout)["clips"] == 16
    # a rotation after the race sweeps orphans: every clip survives it
    assert run("keys", "new", "--out", tmp_path / "new.key").returncode == 0
    rotate = run(
        "keys",
        "rotate",
        "--store",
        store,
        "--key-file",
        key,
        "--new-key-file",
        tmp_path / "new.key",
    )
    assert rotate.returncode == 0, rotate.stderr
    assert len(clips_in(store, tmp_path / "new.key")) == 16


def test_two_ingests_released_at_the_same_moment_both_land(videos, tmp_path) -> None:
    """Both writers are parked at the lock, then released together: the tightest race."""
    store, key = tmp_path / "store", videos["key"]
    EncryptedStore.create(store, read_key_file(key))
    with writer_lock(store):
        procs = [
            start("data", "ingest", videos[s], "--store", store, "--key-file", key, "--json")
            for s in ("a", "b")
        ]
        time.sleep(4)
    outs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
        assert json.loads(out)["ingested"] == 8
    assert len(clips_in(store, key)) == 16
    assert len(list((store / "clips").iterdir())) == 16
    assert run("data", "verify", "--store", store, "--key-file", key).returncode == 0


def test_second_writer_waits_for_the_first(videos, tmp_path) -> None:
    store, key = tmp_path / "store", videos["key"]
    assert run("data", "ingest", videos["a"], "--store", store, "--key-file", key).returncode == 0
    with writer_lock(store):  # another writer is busy with the store
        proc = start("data", "ingest", videos["b"], "--store", store, "--key-file", key)
        time.sleep(3)
        assert proc.poll() is None  # still waiting, nothing written
        assert len(clips_in(store, key)) == 8
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "waiting for another writer" in err
    assert len(clips_in(store, key)) == 16


def test_a_writer_that_waits_too_long_refuses_and_changes_nothing(videos, tmp_path) -> None:
    store, key = tmp_path / "store", videos["key"]
    assert run("data", "ingest", videos["a"], "--store", store, "--key-file", key).returncode == 0
    before = (store / "store.json").read_bytes()
    assert run("keys", "new", "--out", tmp_path / "new.key").returncode == 0
    with writer_lock(store):
        ingest = run(
            "data",
            "ingest",
            videos["b"],
            "--store",
            store,
            "--key-file",
            key,
            env={TIMEOUT_ENV: "0.5"},
        )
        rotate = run(
            "keys",
            "rotate",
            "--store",
            store,
            "--key-file",
            key,
            "--new-key-file",
            tmp_path / "new.key",
            env={TIMEOUT_ENV: "0.5"},
        )
    for proc in (ingest, rotate):
        error_line(proc, 2, str(store), "another veilfed command is still writing", TIMEOUT_ENV)
    assert (store / "store.json").read_bytes() == before
    assert len(list((store / "clips").iterdir())) == 8
    bad = run(
        "data",
        "ingest",
        videos["b"],
        "--store",
        store,
        "--key-file",
        key,
        env={TIMEOUT_ENV: "soon"},
    )
    error_line(bad, 2, TIMEOUT_ENV)


def test_reingesting_the_same_files_adds_nothing(videos, tmp_path) -> None:
    store, key = tmp_path / "store", videos["key"]
    first = run("data", "ingest", videos["a"], "--store", store, "--key-file", key, "--json")
    assert first.returncode == 0 and json.loads(first.stdout)["ingested"] == 8
    files = sorted(p.name for p in (store / "clips").iterdir())
    # the same content again, under the same and under a new name
    renamed = tmp_path / "renamed.mp4"
    renamed.write_bytes((videos["a"] / "clip-000003.mp4").read_bytes())
    again = run(
        "data", "ingest", videos["a"], renamed, "--store", store, "--key-file", key, "--json"
    )
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["ingested"] == 0 and summary["already_in_store"] == 9
    reasons = {Path(s["file"]).name: s["reason"] for s in summary["skipped_files"]}
    assert "already in the store" in reasons["renamed.mp4"]
    assert "clip-000003" in reasons["renamed.mp4"]
    assert len(clips_in(store, key)) == 8
    assert sorted(p.name for p in (store / "clips").iterdir()) == files
    # new files next to known ones: only the new ones are added
    mixed = run(
        "data", "ingest", videos["a"], videos["b"], "--store", store, "--key-file", key, "--json"
    )
    assert json.loads(mixed.stdout)["ingested"] == 8 and len(clips_in(store, key)) == 16


@pytest.mark.slow  # 33 s; the write path is atomic_writer, unit-tested in tests/test_io.py
def test_export_never_replaces_an_existing_file(videos, tmp_path) -> None:
    key = tmp_path / "owner.key"
    key.write_bytes(videos["key"].read_bytes())
    key.chmod(0o600)
    store = tmp_path / "store"
    assert run("data", "ingest", videos["a"], "--store", store, "--key-file", key).returncode == 0
    owner = key.read_bytes()

    def export(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return run(
            "data",
            "export",
            "--store",
            store,
            "--key-file",
            key,
            "--client",
            "client-0000",
            "--out",
            out,
            *extra,
        )

    error_line(export(key), 2, str(key), "is the input", "refused even with --force")
    assert key.read_bytes() == owner  # the owner's only key is intact and still opens the store
    assert run("data", "verify", "--store", store, "--key-file", key).returncode == 0
    dangling = tmp_path / "link.vfs"
    dangling.symlink_to(tmp_path / "elsewhere.vfs")
    error_line(export(dangling), 2, "already exists")
    assert not (tmp_path / "elsewhere.vfs").exists()
    error_line(export(tmp_path), 2, "is a directory")
    bundle = tmp_path / "c0.vfs"
    assert export(bundle).returncode == 0
    first = bundle.read_bytes()
    error_line(export(bundle), 2, "already exists")
    assert bundle.read_bytes() == first
    assert export(bundle, "--force").returncode == 0 and bundle.read_bytes() != first
    # --force never turns an input into the output: the key, a link to it, the store's files
    link = tmp_path / "key-link.vfs"
    link.symlink_to(key)
    manifest = (store / "store.json").read_bytes()
    for target in (key, link, store / "store.json"):
        error_line(export(target, "--force"), 2, str(target), "refused even with --force")
    assert key.read_bytes() == owner and (store / "store.json").read_bytes() == manifest
    assert run("data", "verify", "--store", store, "--key-file", key).returncode == 0


def test_a_crafted_file_name_cannot_replace_a_stored_clip(videos, tmp_path) -> None:
    """Attack: a file named `a-<sha8 of a later file>` takes the id that later file would get."""
    store, key = tmp_path / "store", videos["key"]
    x, y, z = (videos["a"] / f"clip-00000{i}.mp4" for i in range(3))
    dirs = [tmp_path / d for d in ("d1", "d2", "d3")]
    for d in dirs:
        d.mkdir()
    (dirs[0] / "a.mp4").write_bytes(x.read_bytes())
    (dirs[1] / f"a-{hashlib.sha256(y.read_bytes()).hexdigest()[:8]}.mp4").write_bytes(
        z.read_bytes()
    )
    (dirs[2] / "a.mp4").write_bytes(y.read_bytes())
    for d in dirs:
        proc = run("data", "ingest", d, "--store", store, "--key-file", key, "--json")
        assert proc.returncode == 0 and json.loads(proc.stdout)["ingested"] == 1, proc.stderr
    opened = EncryptedStore.open(store, read_key_file(key))
    kept = {opened.read(cid)[0] for cid in opened.ids()}
    assert kept == {p.read_bytes() for p in (x, y, z)}  # three videos in, three videos stored
    # the same video with one byte appended is the same video: not stored twice
    padded = tmp_path / "padded.mp4"
    padded.write_bytes(x.read_bytes() + b"\0")
    again = run("data", "ingest", padded, "--store", store, "--key-file", key, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["already_in_store"] == 1
    assert len(clips_in(store, key)) == 3


@pytest.mark.parametrize("command", ["audit", "train", "simulate"])
def test_summary_and_report_outputs_never_replace_a_file(tmp_path, command: str) -> None:
    """Refused before any work (no MLflow store, no training), the file byte-identical."""
    existing = tmp_path / ("audit.md" if command == "audit" else "summary.json")
    existing.write_text("precious\n")
    args = {
        "audit": ["audit", "some-run", "--out", tmp_path],
        "train": ["train", "--config", TINY, "--summary-json", existing],
        "simulate": ["simulate", "--config", TINY, "--summary-json", existing],
    }[command]
    proc = subprocess.run(
        [VEILFED, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    error_line(proc, 2, str(existing), "already exists", "--force")
    assert existing.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing.name]


def test_failed_labels_leave_no_store(videos, tmp_path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("file,action\nclip-000000.mp4,flying\n")
    store = tmp_path / "store"
    proc = run(
        "data",
        "ingest",
        videos["a"],
        "--store",
        store,
        "--key-file",
        videos["key"],
        "--labels",
        labels,
    )
    error_line(proc, 2, str(labels), "'action'")
    assert not store.exists()


def test_bad_input_is_one_line(videos, tmp_path) -> None:
    synth = run("data", "synth", "--out", tmp_path / "w", "--clips", "1", "--seed", "-5")
    assert synth.returncode == 2 and "Traceback" not in synth.stderr and "--seed" in synth.stderr
    assert not (tmp_path / "w").exists()
    store, key = tmp_path / "store", videos["key"]
    assert run("data", "ingest", videos["a"], "--store", store, "--key-file", key).returncode == 0
    evil = run(
        "data",
        "export",
        "--store",
        store,
        "--key-file",
        key,
        "--client",
        "../../evil",
        "--out",
        tmp_path / "e.vfs",
    )
    error_line(evil, 2, "../../evil")
    assert not (tmp_path / "e.vfs").exists()
    seed = run(
        "data",
        "export",
        "--store",
        store,
        "--key-file",
        key,
        "--client",
        "client-0000",
        "--num-clients",
        "2",
        "--seed",
        "-5",
        "--out",
        tmp_path / "s.vfs",
    )
    assert seed.returncode == 2 and "Traceback" not in seed.stderr


def test_clip_replaced_by_a_directory_is_named(videos, tmp_path) -> None:
    store, key = tmp_path / "store", videos["key"]
    assert run("data", "ingest", videos["a"], "--store", store, "--key-file", key).returncode == 0
    victim = sorted((store / "clips").iterdir())[0]
    victim.unlink()
    victim.mkdir()
    error_line(
        run("data", "verify", "--store", store, "--key-file", key), 1, victim.name, "Is a directory"
    )
    assert run("keys", "new", "--out", tmp_path / "new.key").returncode == 0
    rotate = run(
        "keys",
        "rotate",
        "--store",
        store,
        "--key-file",
        key,
        "--new-key-file",
        tmp_path / "new.key",
    )
    error_line(rotate, 1, victim.name)
    assert len(clips_in(store, key)) == 8  # still wholly under the old key


@pytest.mark.parametrize("command", ["train", "simulate"])
def test_summary_json_over_the_config_is_refused_even_with_force(tmp_path, command) -> None:
    config = tmp_path / "tiny.toml"
    config.write_bytes(TINY.read_bytes())
    proc = run(command, "--config", config, "--summary-json", config, "--force")
    error_line(proc, 2, str(config), "refused even with --force", "--summary-json")
    assert config.read_bytes() == TINY.read_bytes()
