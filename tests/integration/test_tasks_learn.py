"""Every task is learnt: one centralized, non-private run on a small world, then per task the
held-out margin of its primary metric over the label-only baseline (fitted on the training
labels, scored on clips of a world seed training never saw) is positive in the metric's
direction. Fitting a batch shows gradients flow; only a held-out margin shows a task is learnt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from veilfed.centralized import run
from veilfed.config import load_config
from veilfed.data.schema import TASKS

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # ~10 min idle: `make test-slow`

CONFIG = Path(__file__).resolve().parents[2] / "experiments" / "utility.toml"


@pytest.fixture(scope="module")
def summary() -> dict[str, Any]:
    return run(load_config(CONFIG))


@pytest.mark.parametrize("task", TASKS)
def test_the_task_beats_its_label_only_baseline(summary: dict[str, Any], task: str) -> None:
    metric = summary["primary"][task]
    entry = summary["margins"][task][metric]
    gain = entry["margin"] if entry["higher_is_better"] else -entry["margin"]
    assert gain > 0, f"{task} {metric}: {entry['value']:.4g} vs baseline {entry['baseline']:.4g}"
