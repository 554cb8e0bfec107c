"""`veilfed data ingest/verify/export/import` on the real console script, bad input included."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from veilfed.crypto.keys import read_key_file
from veilfed.data import synth, video
from veilfed.data.files import encode_clip
from veilfed.data.records import CLIP_MAGIC, join_records
from veilfed.data.scan import scan
from veilfed.data.store import EncryptedStore

VEILFED = str(Path(sys.executable).parent / "veilfed")


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VEILFED, *map(str, args)], capture_output=True, text=True, timeout=120)


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    key = root / "owner.key"
    assert run("keys", "new", "--out", key).returncode == 0
    proc = run(
        "data",
        "synth",
        "--clips",
        "4",
        "--frames",
        "4",
        "--size",
        "32",
        "--store",
        root / "store",
        "--key-file",
        key,
    )
    assert proc.returncode == 0, proc.stderr
    return {"root": root, "key": key, "store": root / "store"}


def test_verify_ok_and_json(world) -> None:
    proc = run("data", "verify", "--store", world["store"], "--key-file", world["key"], "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["clips"] == 4


def test_verify_names_first_bad_clip_and_chunk(world, tmp_path) -> None:
    copy = tmp_path / "store"
    shutil.copytree(world["store"], copy)
    store = EncryptedStore.open(copy, read_key_file(world["key"]))
    victim = store.ids()[1]
    records = [bytearray(r) for r in store.records(victim)]
    records[1][30] ^= 0xFF
    path = copy / "clips" / store.entry(victim).file
    path.write_bytes(CLIP_MAGIC + join_records(records))
    before = path.read_bytes()
    proc = run("data", "verify", "--store", copy, "--key-file", world["key"])
    one_line_error(proc, 1, f"clip '{victim}' chunk 0 does not decrypt")
    assert proc.stdout == "" and path.read_bytes() == before


def test_bad_store_inputs(world, tmp_path) -> None:
    key = world["key"]
    empty = tmp_path / "empty"
    EncryptedStore.create(empty, read_key_file(key))
    one_line_error(run("data", "verify", "--store", empty, "--key-file", key), 2, "store is empty")
    one_line_error(
        run("data", "verify", "--store", tmp_path / "none", "--key-file", key),
        2,
        "not a veilfed store",
    )
    (empty / "store.json").write_text((empty / "store.json").read_text()[:20])
    one_line_error(
        run("data", "verify", "--store", empty, "--key-file", key), 1, "store.json", "truncated"
    )
    other = tmp_path / "other.key"
    assert run("keys", "new", "--out", other).returncode == 0
    one_line_error(
        run("data", "verify", "--store", world["store"], "--key-file", other),
        2,
        "encrypted with key",
    )


def test_ingest_cli(tmp_path, world) -> None:
    clip = next(synth.iter_world(synth.WorldConfig(frames=4, height=32, width=32), 1))
    mp4 = tmp_path / "real.mp4"
    mp4.write_bytes(encode_clip(clip))
    junk = tmp_path / "junk.mp4"
    junk.write_text("this is not a video")
    proc = run(
        "data", "ingest", mp4, junk, "--store", tmp_path / "s", "--key-file", world["key"], "--json"
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["ingested"] == 1 and summary["skipped_files"][0]["file"] == str(junk)
    only_junk = run("data", "ingest", junk, "--store", tmp_path / "s2", "--key-file", world["key"])
    one_line_error(only_junk, 2, "no video was ingested")
    assert "skipped" in only_junk.stdout and str(junk) in only_junk.stdout
    assert not (tmp_path / "s2").exists()  # no empty store left behind
    assert scan([tmp_path / "s", tmp_path / "s2"], [mp4.read_bytes()]) == []
    assert video.probe(mp4)["width"] == 32  # input left intact


def test_export_import_per_client_keys(world, tmp_path) -> None:
    key, store = world["key"], world["store"]
    outs = {}
    for c in ("client-0000", "client-0001"):
        outs[c] = tmp_path / f"{c}.vfs"
        proc = run(
            "data",
            "export",
            "--store",
            store,
            "--key-file",
            key,
            "--client",
            c,
            "--num-clients",
            "2",
            "--out",
            outs[c],
            "--json",
        )
        assert proc.returncode == 0, proc.stderr
        assert (
            run(
                "keys", "derive", "--key-file", key, "--client", c, "--out", tmp_path / f"{c}.key"
            ).returncode
            == 0
        )
    counts = []
    for c in outs:
        proc = run(
            "data",
            "import",
            outs[c],
            "--store",
            tmp_path / f"node-{c}",
            "--key-file",
            tmp_path / f"{c}.key",
            "--json",
        )
        assert proc.returncode == 0, proc.stderr
        counts.append(json.loads(proc.stdout)["clips"])
        verify = run(
            "data", "verify", "--store", tmp_path / f"node-{c}", "--key-file", tmp_path / f"{c}.key"
        )
        assert verify.returncode == 0, verify.stderr
    assert sum(counts) == 4
    cross = run(
        "data",
        "import",
        outs["client-0001"],
        "--store",
        tmp_path / "evil",
        "--key-file",
        tmp_path / "client-0000.key",
    )
    one_line_error(cross, 2, "bundle is for client client-0001")
    assert not (tmp_path / "evil").exists()
    truncated = tmp_path / "t.vfs"
    truncated.write_bytes(outs["client-0000"].read_bytes()[:-50])
    one_line_error(
        run(
            "data",
            "import",
            truncated,
            "--store",
            tmp_path / "t",
            "--key-file",
            tmp_path / "client-0000.key",
        ),
        1,
        "t.vfs",
        "truncated",
    )
    world_cfg = synth.WorldConfig(frames=4, height=32, width=32)
    plain = [encode_clip(c) for c in synth.iter_world(world_cfg, 4)]
    assert scan([tmp_path, world["store"]], plain) == []
