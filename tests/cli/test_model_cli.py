"""`veilfed model list|check|export`: the first test through the real console script, the others
calling the same command function in process (``invoke``), for speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from testkit.model import save_every_kind_model
from typer.testing import CliRunner

from veilfed.cli.main import app

VEILFED = str(Path(sys.executable).parent / "veilfed")
TINY = Path(__file__).resolve().parents[2] / "experiments" / "tiny.toml"


def run(*args: str | Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VEILFED, *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def invoke(*args: str | Path) -> SimpleNamespace:
    """The command in process, answered like ``run``'s completed process."""
    res = CliRunner().invoke(app, [str(a) for a in args])
    return SimpleNamespace(returncode=res.exit_code, stdout=res.stdout, stderr=res.stderr)


def test_model_list_json() -> None:
    res = run("model", "list", "--json")
    assert res.returncode == 0, res.stderr
    regs = json.loads(res.stdout)
    assert set(regs) == {"encoders", "fusions", "heads", "losses", "augmentations", "compressions"}
    assert {"concat", "vote", "gated", "cross_attention", "transformer"} <= set(regs["fusions"])
    assert len(regs["heads"]) == 12


def test_model_list_table() -> None:
    res = invoke("model", "list")
    assert res.returncode == 0 and "fusions" in res.stdout and "cross_attention" in res.stdout


def test_model_check_tiny_config_passes() -> None:
    res = invoke("model", "check", "--config", TINY, "--json")
    assert res.returncode == 0, res.stderr
    results = json.loads(res.stdout)
    assert len(results) == 5 and all(r["ok"] for r in results)


def test_model_check_failure_exits_1_naming_the_combination(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.read_text().replace("dim = 32\n", "dim = 30\n", 1))
    res = invoke("model", "check", "--config", bad)
    assert res.returncode == 1
    assert "model check: 5 of 5 failed: conv2p1d+logmel_conv+text_transformer/concat" in res.stderr
    assert res.stderr.count("\n") == 1


def test_model_check_bad_mode_exits_2() -> None:
    res = invoke("model", "check", "--mode", "fast")
    assert res.returncode == 2 and "valid: hooks, ghost" in res.stderr
    assert res.stderr.count("\n") == 1


@pytest.mark.integration
@pytest.mark.slow  # every combination, ~35 s; the tiny config's check stays in make test
def test_model_check_all_passes() -> None:
    res = run("model", "check", "--all", "--config", TINY, "--json", timeout=900)
    assert res.returncode == 0, res.stderr
    results = json.loads(res.stdout)
    assert len(results) == 20 and all(r["ok"] for r in results)


def test_model_export_writes_the_file_and_its_parity(tmp_path: Path) -> None:
    save_every_kind_model(tmp_path / "model")
    res = invoke("model", "export", tmp_path / "model", "--format", "torchscript",
              "--out", tmp_path / "m.ts", "--json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    meta = json.loads(res.stdout)
    assert meta["format"] == "torchscript" and (tmp_path / "m.ts").is_file()
    assert max(meta["max_abs_diff"].values()) <= 1e-4
    again = invoke("model", "export", tmp_path / "model", "--format", "torchscript",
                "--out", tmp_path / "m.ts")  # fmt: skip
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--force" in again.stderr
