"""`veilfed keys` through the real console script: exit codes and one-line errors."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

VEILFED = str(Path(sys.executable).parent / "veilfed")


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VEILFED, *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # 27 s; rotation itself is tested in tests/data/test_store.py, tests/crypto
def test_keys_new_derive_rotate(tmp_path: Path) -> None:
    k1, k2 = tmp_path / "k1.key", tmp_path / "k2.key"
    assert run("keys", "new", "--out", k1).returncode == 0
    assert stat.S_IMODE(k1.stat().st_mode) == 0o600
    again = run("keys", "new", "--out", k1)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert again.stderr.count("\n") == 1
    assert run("keys", "new", "--out", k2).returncode == 0
    synth = run(
        "data",
        "synth",
        "--clips",
        "2",
        "--frames",
        "4",
        "--size",
        "32",
        "--store",
        tmp_path / "s",
        "--key-file",
        k1,
    )
    assert synth.returncode == 0, synth.stderr
    rot = run(
        "keys",
        "rotate",
        "--store",
        tmp_path / "s",
        "--key-file",
        k1,
        "--new-key-file",
        k2,
        "--json",
    )
    assert rot.returncode == 0, rot.stderr
    assert run("data", "verify", "--store", tmp_path / "s", "--key-file", k2).returncode == 0
    old = run("data", "verify", "--store", tmp_path / "s", "--key-file", k1)
    assert old.returncode == 2 and "keys rotate" in old.stderr and old.stderr.count("\n") == 1
    derived = run(
        "keys", "derive", "--key-file", k2, "--client", "client-0000", "--out", tmp_path / "c0.key"
    )
    assert derived.returncode == 0 and stat.S_IMODE((tmp_path / "c0.key").stat().st_mode) == 0o600
    secrets = [p.read_text().strip() for p in (k1, k2, tmp_path / "c0.key")]
    for proc in (synth, rot, old, derived):
        assert not any(s in proc.stdout + proc.stderr for s in secrets)


def test_world_readable_key_refused(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    assert run("keys", "new", "--out", key).returncode == 0
    key.chmod(0o644)
    proc = run("data", "verify", "--store", tmp_path / "s", "--key-file", key)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {key}: key file is readable by group or others")
    assert "chmod 600" in proc.stderr and "Traceback" not in proc.stderr
    assert key.read_text().strip() not in proc.stderr
