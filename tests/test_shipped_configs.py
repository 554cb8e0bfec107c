"""What every configuration the project ships promises about privacy."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(
    [*ROOT.glob("experiments/*.toml"), *ROOT.glob("deploy/**/*.toml"), ROOT / "pyproject.toml"]
)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_shipped_config_sends_plaintext_beside_ciphertexts(path: Path) -> None:
    """``[he] shadow`` makes simulated clients send plaintext weights next to their ciphertexts;
    it is a test-only setting, never on in a config users run."""
    data = tomllib.loads(path.read_text())
    he = data.get("he", {})
    assert he.get("shadow", False) is False, f"{path}: [he] shadow must be off"
    app = data.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {})
    assert not any("shadow" in str(k) for k in app), f"{path}: the Flower app config sets shadow"


def test_the_demo_runs_with_he_and_without_the_insecure_noise_switch() -> None:
    demo = (ROOT / "experiments" / "demo.sh").read_text()
    assert "--he" in demo and "VEILFED_INSECURE_NOISE_SEED" not in demo
