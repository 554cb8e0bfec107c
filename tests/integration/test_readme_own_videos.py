"""README's "Your own videos" walkthrough, run as written: every fenced block between the
``own-videos`` markers, in order, with bash, from a directory that looks like the checkout
(``.venv`` and ``experiments`` linked), so a command that drifts from the code fails here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("<!-- own-videos:start -->")[1].split("<!-- own-videos:end -->")[0]
    return "\n".join(re.findall(r"```bash\n(.*?)```", section, flags=re.S))


@pytest.mark.slow
@pytest.mark.integration
def test_the_own_videos_walkthrough_runs_as_written(tmp_path: Path) -> None:
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    script = "set -euo pipefail\n" + walkthrough()
    res = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200
    )
    assert res.returncode == 0, res.stderr[-3000:]
    train = json.loads((tmp_path / "own" / "train.json").read_text())
    simulate = json.loads((tmp_path / "own" / "simulate.json").read_text())
    boxes = json.loads((tmp_path / "own" / "train-boxes.json").read_text())
    for summary in (train, simulate):
        assert {"scene", "restoration", "next_frame"} <= set(summary["metrics"])
        assert "accuracy" in summary["baselines"]["scene"]
    assert all(c["epsilon"] <= 8.0 for c in simulate["clients"].values())
    # The owner's classes and boxes are learned: held-out margins clear of the baselines.
    assert train["margins"]["scene"]["accuracy"]["margin_ci95"][0] > 0
    assert boxes["margins"]["objects"]["map50"]["margin_ci95"][0] > 0
    assert train["registry"]["alias"] == "champion"
    predicted = json.loads((tmp_path / "own" / "predict.json").read_text())
    assert predicted["video"]["scene"]["class"] in ("cartoon", "street")


def test_the_walkthrough_uses_only_shipped_configs() -> None:
    for config in re.findall(r"--config (\S+)", walkthrough()):
        assert (ROOT / config).is_file(), config
