"""`veilfed he`: key files, exit codes and one-line errors. The first test goes through the real
console script; the others call the same command function in process (``invoke``), for speed."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from typer.testing import CliRunner

from veilfed.cli.main import app
from veilfed.crypto.he_keys import MAGIC

VEILFED = str(Path(sys.executable).parent / "veilfed")


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VEILFED, *map(str, args)], capture_output=True, text=True, timeout=120)


def invoke(*args: str | Path) -> SimpleNamespace:
    """The command in process, answered like ``run``'s completed process."""
    res = CliRunner().invoke(app, [str(a) for a in args])
    return SimpleNamespace(returncode=res.exit_code, stdout=res.stdout, stderr=res.stderr)


def test_keygen_writes_secret_and_public_contexts(tmp_path: Path) -> None:
    done = run("he", "keygen", "--out", tmp_path / "k", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    secret, public = Path(summary["secret_context"]), Path(summary["public_context"])
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert summary["params"]["poly_modulus_degree"] == 4096
    assert summary["worst_case_error"] <= 1e-5
    info = run("he", "info", public, "--public", "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["key_id"] == summary["key_id"]
    assert json.loads(info.stdout)["kind"] == "public"
    assert run("he", "info", secret, "--secret").returncode == 0

    again = run("he", "keygen", "--out", tmp_path / "k")
    assert again.returncode == 2 and "already exists" in again.stderr
    assert again.stderr.count("\n") == 1
    assert run("he", "keygen", "--out", tmp_path / "k", "--force").returncode == 0


def test_wrong_or_missing_context_file_exit_2(tmp_path: Path) -> None:
    assert invoke("he", "keygen", "--out", tmp_path).returncode == 0
    garbage = tmp_path / "garbage.ctx"
    garbage.write_bytes(b"not a context")
    cases = [
        (("he", "info", tmp_path / "secret.ctx", "--public"), "coordinator must load"),
        (("he", "info", tmp_path / "public.ctx", "--secret"), "no secret key"),
        (("he", "info", tmp_path / "missing.ctx"), "not found"),
        (("he", "info", garbage), "not a veilfed HE context"),
    ]
    for args, message in cases:
        done = invoke(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and done.stderr.count("\n") == 1
        assert "Traceback" not in done.stderr and done.stdout == ""


def test_keygen_bounds_too_wide_exit_2(tmp_path: Path) -> None:
    done = invoke("he", "keygen", "--out", tmp_path, "--max-total-weight", str(2**40))
    assert done.returncode == 2 and "60-bit prime" in done.stderr
    assert not any(tmp_path.iterdir())  # no partial output


def test_keygen_infinite_bound_is_one_line(tmp_path: Path) -> None:
    done = invoke("he", "keygen", "--out", tmp_path, "--max-abs-update", "inf")
    assert done.returncode == 2 and "finite max_abs_update" in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir())


def test_info_rejects_a_header_that_lies_about_the_moduli(tmp_path: Path) -> None:
    """A public.ctx whose header claims a bigger modulus chain than its context has."""
    assert invoke("he", "keygen", "--out", tmp_path).returncode == 0
    blob = (tmp_path / "public.ctx").read_bytes()
    size = int.from_bytes(blob[len(MAGIC) : len(MAGIC) + 4], "big")
    start = len(MAGIC) + 4
    header = json.loads(blob[start : start + size])
    for moduli in ([200, 16], [51, 16, 16], [52, 16], [50, 17]):
        header["params"]["coeff_mod_bit_sizes"] = moduli
        raw = json.dumps(header).encode()
        forged = tmp_path / "forged.ctx"
        forged.write_bytes(
            blob[: len(MAGIC)] + len(raw).to_bytes(4, "big") + raw + blob[start + size :]
        )
        done = invoke("he", "info", forged, "--public")
        assert done.returncode == 2, (moduli, done.stdout)
        assert "header parameters do not match the context" in done.stderr
        assert done.stderr.count("\n") == 1 and done.stdout == ""
